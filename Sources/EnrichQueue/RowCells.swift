import NIOCore
import PostgresNIO

/// A row's cells read in order, each decoded with a concrete type. For the hot statements (claim,
/// write-back): `row.decode((A, B, ...).self)` resolved generic metadata for each column of each row at run
/// time (about 3% of the runner's CPU per pair, profiled), while a concrete type here is specialised.
///
/// Cells are read as binary whatever format they claim: PostgresNIO asks for every result column in binary,
/// but the rows of its older prepared statements (``PreparedStatements``) carry the statement's own
/// description, in which the server always says text.
struct RowCells {
    private var cells: PostgresRow.Iterator
    private let statement: StaticString

    init(_ row: PostgresRow, of statement: StaticString) {
        cells = row.makeIterator()
        self.statement = statement
    }

    /// The next cell as `T`. Throws when the row has no more cells or the cell is NULL or not a `T`.
    mutating func next<T: PostgresDecodable>(_: T.Type) throws -> T {
        let cell = try nextCell()
        guard let bytes = cell.bytes else {
            throw DatabaseError(.queryFailed, "\(statement): column \(cell.columnName) is unexpectedly NULL")
        }
        return try decode(T.self, bytes, cell)
    }

    /// The next cell as `T`, or nil when it is NULL.
    mutating func nextIfPresent<T: PostgresDecodable>(_: T.Type) throws -> T? {
        let cell = try nextCell()
        guard let bytes = cell.bytes else { return nil }
        return try decode(T.self, bytes, cell)
    }

    private mutating func nextCell() throws -> PostgresCell {
        guard let cell = cells.next() else {
            throw DatabaseError(.queryFailed, "\(statement): the answer has fewer columns than expected")
        }
        return cell
    }

    private func decode<T: PostgresDecodable>(_: T.Type, _ bytes: ByteBuffer, _ cell: PostgresCell) throws -> T {
        var bytes = bytes
        do {
            return try T(from: &bytes, type: cell.dataType, format: .binary, context: .default)
        } catch {
            throw DatabaseError(
                .queryFailed,
                "\(statement): column \(cell.columnName) (type \(cell.dataType)) could not be read as \(T.self)"
            )
        }
    }
}
