import EnrichQueue
import Foundation
import NymbleSimulator
import PostgresNIO
import Testing

/// The write-back target: the application's SQL that receives each written batch in the same transaction as
/// the queue, through the built binary against real PostgreSQL and the simulator.
@Suite("Write-back target: results into the app's own table", .freshSchema, .timeLimit(.minutes(3)))
struct TargetTests {
    static func quoted(_ database: Database) -> String { "\"\(database.configuration.schema)\"" }

    /// The app's table, one row per pair, its context columns empty.
    static func createAppTable(_ database: Database, pairs: [Pair]) async throws {
        let table = "\(quoted(database)).app_memberships"
        try await database.client.query(
            """
            CREATE TABLE \(unescaped: table) (
                organization_id text NOT NULL, user_id text NOT NULL,
                customer_number text, price_tier text, currency_code text, enriched boolean NOT NULL DEFAULT false,
                PRIMARY KEY (organization_id, user_id))
            """,
            logger: quietLogger
        )
        try await database.client.query(
            """
            INSERT INTO \(unescaped: table) (organization_id, user_id)
            SELECT * FROM unnest(\(pairs.map(\.organizationId))::text[], \(pairs.map(\.userId))::text[])
            """,
            logger: quietLogger
        )
    }

    /// An UPDATE of the app's table from the five arrays; `poison` makes a batch holding that user fail.
    static func targetSQL(_ database: Database, poison: String? = nil) -> String {
        let guardClause = poison.map { " AND 1 / (CASE WHEN t.u = '\($0)' THEN 0 ELSE 1 END) = 1" } ?? ""
        return """
            UPDATE \(quoted(database)).app_memberships AS m
            SET customer_number = t.c, price_tier = t.p, currency_code = t.cur, enriched = true
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(o, u, c, p, cur)
            WHERE m.organization_id = t.o AND m.user_id = t.u\(guardClause)
            """
    }

    /// (done rows in the queue, enriched app rows, app rows that disagree with their queue row).
    static func agreement(_ database: Database) async throws -> (Int64, Int64, Int64) {
        let schema = quoted(database)
        let rows = try await database.client.query(
            """
            SELECT (SELECT count(*) FROM \(unescaped: schema).queue_items WHERE state = 'done'),
                (SELECT count(*) FROM \(unescaped: schema).app_memberships WHERE enriched),
                (SELECT count(*) FROM \(unescaped: schema).app_memberships AS m
                 JOIN \(unescaped: schema).queue_items AS q
                   ON q.organization_id = m.organization_id AND q.user_id = m.user_id
                 WHERE (q.state = 'done') <> m.enriched
                    OR (m.enriched AND (q.customer_number IS DISTINCT FROM m.customer_number
                        OR q.price_tier IS DISTINCT FROM m.price_tier
                        OR q.currency_code IS DISTINCT FROM m.currency_code)))
            """,
            logger: quietLogger
        )
        var result: (Int64, Int64, Int64) = (0, 0, 0)
        for try await row in rows { result = try row.decode((Int64, Int64, Int64).self) }
        return result
    }

    @Test("--target-sql fills the app's table with every result (nulls kept), agreeing with the queue row for row")
    func targetFilled() async throws {
        let database = try TestDatabase.require()
        let pairs = WorkerHarness.pairs(600, malformedEvery: 100)
        try await WorkerHarness.enqueue(pairs, into: database)
        try await Self.createAppTable(database, pairs: pairs)
        try await NymbleSimulator.withRunning(logger: quietLogger) { _, baseURL in
            let child = try EnrichProcess.start(
                ["run", "--progress", "off", "--target-sql", Self.targetSQL(database)],
                environment: try WorkerProcessTests.environment(database, baseURL: baseURL)
            )
            let status = try await child.wait()
            #expect(status == 1, "6 malformed pairs failed for good: \(child.standardError.suffix(600))")
        }
        let (done, enriched, disagreeing) = try await Self.agreement(database)
        #expect(
            done == 594 && enriched == 594 && disagreeing == 0,
            "\(done) done, \(enriched) in the app, \(disagreeing) differ"
        )
        let nulls = try await database.client.query(
            "SELECT count(*) FROM \(unescaped: Self.quoted(database)).app_memberships WHERE enriched AND price_tier IS NULL",
            logger: quietLogger
        )
        for try await count in nulls.decode(Int64.self) { #expect(count > 0, "null price tiers arrive as NULL") }
    }

    @Test(
        "a target failing mid-run: exit 2 naming it, the batch written nowhere (app and queue agree), its rows retryable; a fixed target finishes them"
    )
    func failingTarget() async throws {
        let database = try TestDatabase.require()
        let pairs = WorkerHarness.pairs(400)
        try await WorkerHarness.enqueue(pairs, into: database)
        try await Self.createAppTable(database, pairs: pairs)
        try await NymbleSimulator.withRunning(logger: quietLogger) { _, baseURL in
            let environment = try WorkerProcessTests.environment(database, baseURL: baseURL)
            let failing = try EnrichProcess.start(
                ["run", "--progress", "off", "--target-sql", Self.targetSQL(database, poison: "u_250")],
                environment: environment
            )
            #expect(try await failing.wait() == 2)
            #expect(failing.standardError.contains("the write-back target SQL from --target-sql failed"))
            #expect(failing.standardError.contains("division by zero"))
            let (done, enriched, disagreeing) = try await Self.agreement(database)
            #expect(done < 400 && done == enriched && disagreeing == 0, "\(done) done, \(enriched) in the app")

            let fixed = try EnrichProcess.start(
                ["run", "--progress", "off", "--target-sql", Self.targetSQL(database)],
                environment: environment
            )
            #expect(try await fixed.wait() == 0, "\(fixed.standardError.prefix(6_000))")
        }
        let (done, enriched, disagreeing) = try await Self.agreement(database)
        #expect(done == 400 && enriched == 400 && disagreeing == 0, "\(done) done, \(enriched) in the app")
    }

    @Test("a job whose target SQL has a typo exits 3 at once naming the job file, before any call")
    func badTargetRefused() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(20), into: database)
        let jobs = try JobRunTests.jobsDirectory([
            "sync.json": """
            {"source": "queue", "target": {"sql": "UPDATE \\"\(database.configuration.schema)\\".no_such_table SET x = 1 FROM unnest($1::text[]) AS t(o)"}}
            """
        ])
        try await NymbleSimulator.withRunning(logger: quietLogger) { simulator, baseURL in
            let started = ContinuousClock.now
            let child = try EnrichProcess.start(
                ["run", "--job", "sync", "--jobs-dir", jobs.path, "--progress", "off"],
                environment: try WorkerProcessTests.environment(database, baseURL: baseURL)
            )
            #expect(try await child.wait() == 3)
            #expect(started.duration(to: .now) < .seconds(10))
            #expect(child.standardError.contains("sync.json: target.sql"), "\(child.standardError)")
            #expect(child.standardError.contains("no_such_table"))
            let stats = simulator.stats()
            #expect(stats.logins == 0 && stats.access200 == 0, "no call before the target was checked")
        }
    }
}
