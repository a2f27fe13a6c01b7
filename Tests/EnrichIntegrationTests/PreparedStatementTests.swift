import EnrichCore
import Logging
import PostgresNIO
import Testing

@testable import EnrichQueue

/// The claim and the write-back are prepared once per connection (``PreparedStatements``): what that must
/// not change, and what happens when a prepared statement goes away.
@Suite("Prepared statements on a real PostgreSQL", .freshSchema, .timeLimit(.minutes(3)))
struct PreparedStatementTests {
    static let echo = PreparedStatement(
        operation: "echo",
        sql: "SELECT $1::bigint + 1, $2::text, coalesce($3::integer, -1), cardinality($4::bigint[])"
    )

    static func echoBinds(_ value: Int64) throws -> [PostgresData] {
        [
            try PostgresData(binding: value), try PostgresData(binding: "a"), try PostgresData(binding: Int32?.none),
            try PostgresData(binding: [Int64](repeating: 7, count: 3)),
        ]
    }

    static func decodeEcho(_ rows: [PostgresRow]) throws -> (Int64, String, Int32, Int32) {
        try #require(rows.count == 1)
        var cells = RowCells(rows[0], of: "echo")
        return (
            try cells.next(Int64.self), try cells.next(String.self), try cells.next(Int32.self),
            try cells.next(Int32.self)
        )
    }

    /// The names of the statements prepared on this session's connection.
    static func preparedNames(_ session: DatabaseSession) async throws -> [String] {
        try await session.query("SELECT name FROM pg_prepared_statements ORDER BY name").map {
            try $0.decode(String.self)
        }
    }

    @Test("a statement is prepared once per connection, then executed by name with new values each time")
    func preparedOncePerConnection() async throws {
        let database = try TestDatabase.require()
        let names = try await database.withSession("test") { session in
            for value in Int64(0)..<5 {
                let answer = try Self.decodeEcho(try await session.execute(Self.echo, try Self.echoBinds(value)))
                #expect(answer == (value + 1, "a", -1, 3))
            }
            return try await Self.preparedNames(session)
        }
        #expect(names.count == 1, "one server-side statement for five executions: \(names)")
    }

    @Test(
        "a statement that vanished from its connection fails once, retryably, with the server's reason, then is prepared again"
    )
    func vanishedStatementIsPreparedAgain() async throws {
        let database = try TestDatabase.require()
        try await database.withSession("test") { session in
            _ = try await session.execute(Self.echo, try Self.echoBinds(1))
            try await session.query("DEALLOCATE ALL")
            let error = await #expect(throws: DatabaseError.self) {
                try await session.execute(Self.echo, try Self.echoBinds(2))
            }
            #expect(error?.code == .preparedStatementLost, "\(String(describing: error))")
            #expect(error?.isTransient == true, "the worker retries it")
            #expect(error?.message.contains("does not exist, SQLSTATE 26000") == true, "\(String(describing: error))")
            #expect(error?.message.contains("--prepared-statements off") == true, "\(String(describing: error))")
            let answer = try Self.decodeEcho(try await session.execute(Self.echo, try Self.echoBinds(3)))
            #expect(answer.0 == 4)
            #expect(try await Self.preparedNames(session).count == 1)
        }
    }

    @Test("a statement that fails for its values stays prepared: the next call runs it by name")
    func failureKeepsTheStatement() async throws {
        let database = try TestDatabase.require()
        let divide = PreparedStatement(operation: "divide", sql: "SELECT 1 / $1::integer")
        let names = try await database.withSession("test") { session in
            _ = try await session.execute(divide, [try PostgresData(binding: Int32(1))])
            let error = await #expect(throws: DatabaseError.self) {
                try await session.execute(divide, [try PostgresData(binding: Int32(0))])
            }
            #expect(error?.code == .queryFailed)
            #expect(
                error?.sqlState == "22012",
                "division by zero, worded like any server error: \(String(describing: error))"
            )
            let rows = try await session.execute(divide, [try PostgresData(binding: Int32(1))])
            var cells = RowCells(try #require(rows.first), of: "divide")
            #expect(try cells.next(Int32.self) == 1)
            return try await Self.preparedNames(session)
        }
        #expect(names.count == 1, "prepared once for all three calls: \(names)")
    }

    @Test(
        "a connection closed under a prepared statement fails it as a lost connection, and its statements are forgotten"
    )
    func lostConnection() async throws {
        let database = try TestDatabase.require()
        let before = database.statements.count
        try await database.withSession("test") { session in
            _ = try await session.execute(Self.echo, try Self.echoBinds(1))
            #expect(database.statements.count == before + 1)
            _ = try? await session.query("SELECT pg_terminate_backend(pg_backend_pid())")
            let error = await #expect(throws: DatabaseError.self) {
                try await session.execute(Self.echo, try Self.echoBinds(2))
            }
            #expect(error?.code == .cannotConnect, "\(String(describing: error))")
        }
        // The pool's next connection prepares it afresh.
        let answer = try await database.withSession("test") { session in
            try Self.decodeEcho(try await session.execute(Self.echo, try Self.echoBinds(5)))
        }
        #expect(answer.0 == 6)
        #expect(database.statements.count <= before + 1, "the closed connection's statement was forgotten")
    }

    @Test("the claim and the write-back keep a good plan when PostgreSQL reuses a generic one")
    func genericPlans() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        _ = try await QueueTests().enqueue(queue, QueueTests.pairs(15_000))
        try await queue.refreshStatisticsIfStale()
        _ = try await queue.claim(owner: "w1", limit: 500, lease: .seconds(60))
        let claim = try await Self.genericPlan(queue.statements.claim, parameters: 7, in: database)
        #expect(claim.contains("queue_items_claim_idx"), "fresh rows come from the claim index: \(claim)")
        #expect(!claim.contains("Seq Scan"), "\(claim)")
        let writeBack = try await Self.genericPlan(queue.statements.writeBack, parameters: 18, in: database)
        #expect(writeBack.contains("queue_items_pkey"), "rows are found by id: \(writeBack)")
        #expect(!writeBack.contains("Seq Scan"), "\(writeBack)")
        #expect(!writeBack.contains("Join Filter"), "\(writeBack)")
    }

    /// The plan PostgreSQL keeps for `statement` once it plans it without its values (PostgreSQL 15 has no
    /// `EXPLAIN (GENERIC_PLAN)`): prepared on a connection of its own, explained with every value NULL.
    static func genericPlan(
        _ statement: PreparedStatement,
        parameters: Int,
        in database: Database
    ) async throws
        -> String
    {
        try await database.withDirectSession("generic plan") { session in
            try await session.query("SET plan_cache_mode = force_generic_plan")
            try await session.query(PostgresQuery(unsafeSQL: "PREPARE generic AS " + statement.sql))
            let nulls = Array(repeating: "NULL", count: parameters).joined(separator: ", ")
            return try await session.query(PostgresQuery(unsafeSQL: "EXPLAIN EXECUTE generic(\(nulls))"))
                .map { try $0.decode(String.self) }.joined(separator: "\n")
        }
    }
}

@Suite("Prepared statements switched off", .freshSchema, .timeLimit(.minutes(3)))
struct PreparedStatementsOffTests {
    @Test("with prepared statements off, the claim and the write-back run unnamed: nothing is prepared, all is written")
    func off() async throws {
        var configuration = try TestDatabase.require().configuration
        configuration.preparedStatements = false
        configuration.maximumConnections = 1
        try await Database.withDatabase(configuration, logger: Logger(label: "enrich.tests.unprepared")) { database in
            let queue = Queue(database: database)
            _ = try await QueueTests().enqueue(queue, QueueTests.pairs(20))
            let claimed = try await queue.claim(owner: "w1", limit: 50, lease: .seconds(60)).items
            #expect(claimed.count == 20)
            let context = CommerceContext(customerNumber: "c", priceTier: "t", currencyCode: "EUR")
            let written = try await queue.complete(claimed.map { Completion(item: $0, context: context) }, owner: "w1")
            #expect(written.written == 20)
            #expect(database.statements.count == 0)
            let prepared = try await database.query("prepared", "SELECT count(*) FROM pg_prepared_statements")
            #expect(try prepared.first?.decode(Int64.self) == 0, "the pool's one connection holds no statement")
            #expect(try await queue.exactCounts().done == 20)
        }
    }
}
