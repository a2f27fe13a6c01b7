import PostgresNIO

/// A row's cells read in order, each decoded with a concrete type. For the hot statements (claim,
/// write-back): `row.decode((A, B, ...).self)` resolved generic metadata for each column of each row at run
/// time (about 3% of the runner's CPU per pair, profiled), while a concrete type here is specialised.
struct RowCells {
    private var cells: PostgresRow.Iterator
    private let statement: StaticString

    init(_ row: PostgresRow, of statement: StaticString) {
        cells = row.makeIterator()
        self.statement = statement
    }

    /// The next cell as `T`. Throws when the row has no more cells or the cell is not a `T`.
    mutating func next<T: PostgresDecodable>(_: T.Type) throws -> T {
        guard let cell = cells.next() else {
            throw DatabaseError(.queryFailed, "\(statement): the answer has fewer columns than expected")
        }
        return try cell.decode(T.self)
    }
}
