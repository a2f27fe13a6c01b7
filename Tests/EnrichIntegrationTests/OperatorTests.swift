import AsyncHTTPClient
import EnrichQueue
import EnrichStatus
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Testing

/// The operator's tools after a run, through the built binary and over HTTP against real PostgreSQL:
/// `failures`, filtered `requeue`, one-pair `enqueue`, and the status page.
@Suite("Operator: failures, filtered requeue, one-pair enqueue, the status page", .freshSchema, .timeLimit(.minutes(3)))
struct OperatorTests {
    static func quoted(_ database: Database) -> String { "\"\(database.configuration.schema)\"" }

    /// Failed rows as runs would leave them: `count` rows of `org` with `reason`, failed by `run`.
    static func insertFailed(
        _ database: Database,
        count: Int,
        org: String,
        reason: String,
        run: Int64,
        from start: Int
    ) async throws {
        try await database.client.query(
            """
            INSERT INTO \(unescaped: quoted(database)).queue_items
                (organization_id, user_id, state, attempts, last_error, job_run_id, updated_at)
            SELECT \(org), 'user_' || n, 'failed', 1, \(reason), \(run), now() - make_interval(secs => n)
            FROM generate_series(\(start), \(start + count - 1)) AS n
            """,
            logger: quietLogger
        )
    }

    /// `enrich <arguments>` against the test schema: (exit status, standard output).
    static func enrich(_ database: Database, _ arguments: [String]) async throws -> (Int32, String) {
        let child = try EnrichProcess.start(
            arguments,
            environment: try WorkerProcessTests.environment(database, baseURL: "http://127.0.0.1:9")
        )
        let status = try await child.wait(timeout: .seconds(60))
        return (status, child.standardOutput)
    }

    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test(
        "failures groups by reason with exact counts and filters; requeue takes the same filters, --dry-run changes nothing"
    )
    func failuresAndRequeue() async throws {
        let database = try TestDatabase.require()
        let badRequest = "Nymble access HTTP 400 (badRequest): OrganizationId or UserId missing or malformed"
        let gone = "Nymble access HTTP 503 (serverError): server error (out of attempts)"
        try await Self.insertFailed(database, count: 30, org: "org_a", reason: badRequest, run: 7, from: 1)
        try await Self.insertFailed(database, count: 12, org: "org_b", reason: badRequest, run: 8, from: 100)
        try await Self.insertFailed(database, count: 5, org: "org_a", reason: gone, run: 8, from: 200)

        let (status, output) = try await Self.enrich(database, ["failures", "--json"])
        #expect(status == 0)
        let report = try Self.json(output)
        #expect(report["total"] as? Int == 47)
        let groups = try #require(report["groups"] as? [[String: Any]])
        #expect(groups.map { $0["reason"] as? String } == [badRequest, gone], "largest group first")
        #expect(groups.map { $0["count"] as? Int } == [42, 5])
        let examples = try #require(groups.first?["examples"] as? [[String: Any]])
        #expect(examples.count == 3 && examples.first?["userId"] as? String == "user_1", "the most recent first")

        let (_, orgB) = try await Self.enrich(database, ["failures", "--json", "--org", "org_b"])
        #expect((try Self.json(orgB)["groups"] as? [[String: Any]])?.map { $0["count"] as? Int } == [12])
        let (_, run8) = try await Self.enrich(
            database,
            ["failures", "--json", "--run", "8", "--reason", "SERVER ERROR"]
        )
        #expect((try Self.json(run8)["total"] as? Int) == 5, "reason matched case-insensitively, within run 8")
        let (_, table) = try await Self.enrich(database, ["failures"])
        #expect(table.contains("47 failed rows") && table.contains("42 × \(badRequest)"), "\(table)")

        let (_, dry) = try await Self.enrich(
            database,
            ["requeue", "--reason", "badrequest", "--run", "8", "--dry-run"]
        )
        #expect(dry.contains("would queue 12 failed rows"), "\(dry)")
        #expect(try await Queue(database: database).exactCounts().failed == 47, "a dry run changes nothing")
        let (_, requeued) = try await Self.enrich(database, ["requeue", "--reason", "badrequest", "--run", "8"])
        #expect(requeued.contains("queued 12 failed rows"), "\(requeued)")
        let counts = try await Queue(database: database).exactCounts()
        #expect(counts.failed == 35 && counts.pending == 12)
        let (_, all) = try await Self.enrich(database, ["requeue"])
        #expect(all.contains("queued 35 failed rows"))
        #expect(try await Queue(database: database).exactCounts().failed == 0)
    }

    @Test("enqueue --org --user adds one pair (a quick retry); a half-given pair is a usage error")
    func enqueueOnePair() async throws {
        let database = try TestDatabase.require()
        let (status, output) = try await Self.enrich(database, ["enqueue", "--org", "org_z", "--user", "u 1"])
        #expect(status == 0 && output.contains("1 new"), "\(output)")
        let (again, repeated) = try await Self.enrich(database, ["enqueue", "--org", "org_z", "--user", "u 1"])
        #expect(again == 0 && repeated.contains("1 already queued"), "\(repeated)")
        #expect(try await Queue(database: database).exactCounts().pending == 1)
        let (usage, _) = try await Self.enrich(database, ["enqueue", "--org", "org_z"])
        #expect(usage == 64)
    }

    @Test("status --watch redraws the table every interval until stopped (one table after another off a terminal)")
    func statusWatch() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(3), into: database)
        let child = try EnrichProcess.start(
            ["status", "--watch", "0.3"],
            environment: try WorkerProcessTests.environment(database, baseURL: "http://127.0.0.1:9")
        )
        try await Task.sleep(for: .milliseconds(1_800))
        #expect(child.process.isRunning, "it keeps watching")
        child.signal(SIGINT)
        #expect(try await child.wait(timeout: .seconds(10)) == 0, "Ctrl-C ends the watch")
        let tables = child.standardOutput.components(separatedBy: "queue (").count - 1
        #expect(tables >= 3, "\(tables) tables in 1.8 s at 0.3 s:\n\(child.standardOutput)")
        #expect(child.standardOutput.contains("3 pending") && child.standardOutput.contains("refreshed every 0.3 s"))
    }

    @Test("the status page over HTTP: queue, runs, failures and charts from the database, every value escaped")
    func statusPage() async throws {
        let database = try TestDatabase.require()
        let hostile = "<script>alert('x')</script> & \"quoted\""
        try await JobRunTests.insertRun(database, job: "nightly", state: .failed, lastError: hostile)
        try await JobRunTests.insertRun(database, job: "hourly", state: .succeeded)
        try await Self.insertFailed(
            database,
            count: 4,
            org: "org_<b>",
            reason: "<img src=x onerror=alert(1)>",
            run: 1,
            from: 1
        )
        try await WorkerHarness.enqueue(WorkerHarness.pairs(9), into: database)
        // Two heartbeat samples of the first run: 100 rows, then 400, 10 s apart.
        try await database.client.query(
            """
            INSERT INTO \(unescaped: Self.quoted(database)).run_samples (run_id, at, succeeded, failed, throttled)
            SELECT id, started_at + interval '10 seconds', 100, 0, 2 FROM \(unescaped: Self.quoted(database)).job_runs
            WHERE job_name = 'nightly'
            UNION ALL
            SELECT id, started_at + interval '20 seconds', 400, 0, 2 FROM \(unescaped: Self.quoted(database)).job_runs
            WHERE job_name = 'nightly'
            """,
            logger: quietLogger
        )
        let (port, announce) = AsyncStream.makeStream(of: Int.self)
        let server = StatusServer(database: database, host: "127.0.0.1", port: 0, logger: quietLogger) {
            announce.yield($0)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // A server that ends (or fails to start) ends the wait for its port too.
                defer { announce.finish() }
                try await server.run()
            }
            var ports = port.makeAsyncIterator()
            let bound = try #require(await ports.next())
            let response = try await HTTPClient.shared.get(url: "http://127.0.0.1:\(bound)/").get()
            #expect(response.status == .ok)
            #expect(response.headers.first(name: "content-type")?.hasPrefix("text/html") == true)
            let page = response.body.map { String(buffer: $0) } ?? ""
            #expect(!page.contains("<script>") && !page.contains("<img src=x"), "nothing from the database is markup")
            #expect(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quoted&quot;"))
            #expect(page.contains("&lt;img src=x onerror=alert(1)&gt;"))
            #expect(page.contains("org_&lt;b&gt;/user_1"), "failure examples escaped")
            for text in [
                "<div class=\"n\">9</div><div>pending</div>", "<div class=\"n\">4</div><div>failed</div>",
                "nightly", "hourly", "Failures by reason (4 rows)", "http-equiv=\"refresh\" content=\"5\"",
            ] {
                #expect(page.contains(text), "\(text) missing")
            }
            // The throughput chart: one line for the sampled run, ~10 rows/s then 30 rows/s.
            #expect(page.components(separatedBy: "<polyline").count - 1 == 2, "one line in each chart")

            let json = try await HTTPClient.shared.get(url: "http://127.0.0.1:\(bound)/status.json").get()
            let document = try Self.json(json.body.map { String(buffer: $0) } ?? "")
            let status = try #require(document["status"] as? [String: Any])
            #expect((status["queue"] as? [String: Any])?["failed"] as? Int == 4)
            #expect((document["failures"] as? [String: Any])?["total"] as? Int == 4)
            group.cancelAll()
        }
    }
}
