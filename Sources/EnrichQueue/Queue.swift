import Logging
import PostgresNIO

/// The typed API over the queue table. Each job has its own file: enqueue (`Queue+Enqueue`), claim
/// (`Queue+Claim`), write back (`Queue+WriteBack`), counts and new-work notifications (`Queue+Counts`).
///
/// Every write after a claim is fenced by the lease owner *and* the claim number of that claim, so a
/// worker whose lease expired (and whose row was reclaimed by someone else) can never overwrite it.
public struct Queue: Sendable {
    public let database: Database
    var schema: String { database.schema }
    var logger: Logger { database.logger }

    /// The application's SQL that receives each written batch of results (nil: the queue only).
    public let target: WriteBackTarget?

    /// The statements prepared on each connection, for this schema.
    let statements: Statements

    struct Statements: Sendable {
        let claim: PreparedStatement
        let writeBack: PreparedStatement
    }

    public init(database: Database, target: WriteBackTarget? = nil) {
        self.database = database
        self.target = target
        self.statements = Statements(
            claim: Self.claimStatement(schema: database.schema),
            writeBack: Self.writeBackStatement(schema: database.schema)
        )
    }

    /// Which of the rows `ids` a write-back statement changed (`rows` return their ids).
    func outcome(sent ids: [Int64], writtenRows rows: [PostgresRow]) throws -> WriteOutcome {
        var written = Set<Int64>()
        for row in rows { written.insert(try row.makeRandomAccess()[0].decode(Int64.self, context: .default)) }
        return WriteOutcome(written: written.count, staleIDs: ids.filter { !written.contains($0) })
    }

    /// Statements of a bulk load (a `--from-sql` source over a big table) may take minutes.
    static let bulkStatementTimeout: Duration = .seconds(1800)
}
