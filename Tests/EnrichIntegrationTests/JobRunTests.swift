import AsyncHTTPClient
import EnrichQueue
import EnrichThrottle
import Foundation
import NymbleSimulator
import PostgresNIO
import Testing

/// `enrich run --job` and `enrich status --check`, through the built binary against real PostgreSQL and the
/// simulator: jobs from files, the overlap lock, stale runs, the health check, metrics and JSON logs.
@Suite("Jobs: run --job, overlap lock, stale runs, status --check, metrics", .freshSchema, .timeLimit(.minutes(3)))
struct JobRunTests {
    /// A fresh directory holding `files` (name → content), for `--jobs-dir`.
    static func jobsDirectory(_ files: [String: String]) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "enrich-jobs-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for (name, content) in files {
            try Data(content.utf8).write(to: directory.appendingPathComponent(name))
        }
        return directory
    }

    static func quoted(_ schema: String) -> String { "\"\(schema)\"" }

    /// Inserts a job runs row as a dead or finished run would have left it.
    static func insertRun(
        _ database: Database,
        job: String,
        state: RunState,
        startedAgo: String = "1 hour",
        heartbeatAgo: String = "1 hour",
        lastError: String? = nil
    ) async throws {
        let finished = state == .running ? "NULL" : "now() - interval '\(heartbeatAgo)'"
        try await database.client.query(
            """
            INSERT INTO \(unescaped: quoted(database.configuration.schema)).job_runs
                (job_name, trigger, host, pid, state, started_at, heartbeat_at, finished_at, last_error)
            VALUES (\(job), 'cron', 'deadhost', 4242, \(state.rawValue),
                now() - \(unescaped: "interval '\(startedAgo)'"), now() - \(unescaped: "interval '\(heartbeatAgo)'"),
                \(unescaped: finished), \(lastError))
            """,
            logger: quietLogger
        )
    }

    /// `enrich status --check` with `arguments`: exit status and its one line.
    static func check(_ database: Database, _ arguments: [String]) async throws -> (Int32, String) {
        let child = try EnrichProcess.start(
            ["status", "--check"] + arguments,
            environment: try WorkerProcessTests.environment(database, baseURL: "http://127.0.0.1:9")
        )
        let status = try await child.wait()
        return (status, child.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    @Test(
        "two `enrich run --job` at once: one runs (its SQL source enqueued and drained), the other exits 5 within a second"
    )
    func overlap() async throws {
        let database = try TestDatabase.require()
        let table = "\(Self.quoted(database.configuration.schema)).members"
        try await database.client.query(
            "CREATE TABLE \(unescaped: table) (org text NOT NULL, usr text NOT NULL, active boolean NOT NULL)",
            logger: quietLogger
        )
        try await database.client.query(
            """
            INSERT INTO \(unescaped: table)
            SELECT 'org' || (n % 7), 'user' || n, n % 5 <> 0 FROM generate_series(1, 500) AS n
            """,
            logger: quietLogger
        )
        let jobs = try Self.jobsDirectory([
            "nightly.json": """
            {"description": "test", "concurrency": 4,
             "source": {"sql": "SELECT org AS organization_id, usr AS user_id FROM \(table.replacingOccurrences(of: "\"", with: "\\\"")) WHERE active"}}
            """
        ])
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.latency = .init(minimum: .milliseconds(30), maximum: .milliseconds(40))
        try await NymbleSimulator.withRunning(simulatorConfiguration, logger: quietLogger) { simulator, baseURL in
            let environment = try WorkerProcessTests.environment(database, baseURL: baseURL)
            let arguments = [
                "run", "--job", "nightly", "--jobs-dir", jobs.path, "--trigger", "cron", "--progress", "off",
            ]
            let first = try EnrichProcess.start(arguments, environment: environment)
            let jobRuns = JobRuns(database: database)
            let deadline = ContinuousClock.now + .seconds(30)
            while try await jobRuns.recent(limit: 1, jobName: "nightly", state: .running).isEmpty {
                guard first.process.isRunning, ContinuousClock.now < deadline else {
                    Issue.record("the first run never started: \(first.standardError)")
                    return
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            // Three overlapping invocations, all refused; the fastest must give up within a second, process
            // start-up of the debug binary included (the others absorb the noise of a shared, loaded machine).
            var took: [Duration] = []
            for _ in 0..<3 {
                let started = ContinuousClock.now
                let second = try EnrichProcess.start(arguments, environment: environment)
                let secondStatus = try await second.wait()
                took.append(started.duration(to: .now))
                #expect(secondStatus == 5, "\(second.standardError)")
                #expect(second.standardError.contains("another run of job nightly is in progress (run "))
            }
            #expect(first.process.isRunning, "the first run must still hold the lock for the attempts to count")
            let fastest = try #require(took.min())
            #expect(fastest < .seconds(1), "the overlapping runs took \(took) to give up")
            print("overlapping runs exited 5 after \(took.map { String(format: "%.2f s", $0.inSeconds) })")

            let firstStatus = try await first.wait()
            #expect(firstStatus == 0, "\(first.standardError)")
            let runs = try await jobRuns.recent(limit: 5, jobName: "nightly")
            #expect(runs.count == 1, "the refused invocation recorded no run")
            let run = try #require(runs.first)
            #expect(run.state == .succeeded && run.trigger == .cron)
            #expect(run.counters.succeeded == 400 && run.totalItems == 400)
            #expect(simulator.stats().access200 == 400)
            let counts = try await Queue(database: database).exactCounts()
            #expect(counts.done == 400 && counts.total == 400)
        }
    }

    @Test(
        "the lock dies with its holder: after SIGKILL the next run starts at once; a run marked abandoned stops itself"
    )
    func lockDiesWithHolder() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(2_000), into: database)
        let jobs = try Self.jobsDirectory([
            "nightly.json": #"{"source": "queue", "concurrency": 4, "heartbeat": 0.3, "lease": 5}"#
        ])
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.latency = .init(minimum: .milliseconds(20), maximum: .milliseconds(30))
        try await NymbleSimulator.withRunning(simulatorConfiguration, logger: quietLogger) { _, baseURL in
            let environment = try WorkerProcessTests.environment(database, baseURL: baseURL)
            let arguments = ["run", "--job", "nightly", "--jobs-dir", jobs.path, "--progress", "off"]
            let killed = try EnrichProcess.start(arguments, environment: environment)
            try await WorkerProcessTests.waitForDone(50, in: database, child: killed)
            killed.signal(SIGKILL)
            _ = try await killed.wait()

            let killedRun = try #require(try await JobRuns(database: database).recent(limit: 1).first)
            try await TestDatabase.waitUntilServerUp(for: JobRuns.restartGrace)
            let next = try EnrichProcess.start(arguments, environment: environment)
            let jobRuns = JobRuns(database: database)
            let deadline = ContinuousClock.now + .seconds(30)
            while try await jobRuns.recent(limit: 1, jobName: "nightly", state: .running).first?.id ?? 0 <= killedRun.id
            {
                guard next.process.isRunning, ContinuousClock.now < deadline else {
                    Issue.record("the next run did not start: \(next.standardError)")
                    return
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            // The killed run's liveness lock died with it: the next run marked it abandoned at its start.
            let dead = try #require(try await jobRuns.run(id: killedRun.id))
            #expect(dead.state == .abandoned)
            #expect(dead.lastError?.contains("its process is gone") == true, "\(dead.lastError ?? "")")
            #expect(dead.counters.succeeded >= 50, "its counters come from the rows it wrote: \(dead.counters)")
            // Its heartbeat is fresh, so nobody could call it dead; do it by hand, as a runner would have.
            let current = try #require(try await jobRuns.recent(limit: 1, jobName: "nightly", state: .running).first)
            try await database.client.query(
                """
                UPDATE \(unescaped: Self.quoted(database.configuration.schema)).job_runs
                SET state = 'abandoned', finished_at = now() WHERE id = \(current.id)
                """,
                logger: quietLogger
            )
            let status = try await next.wait()
            #expect(status == 2, "\(next.standardError)")
            #expect(next.standardError.contains("another runner marked this run abandoned"))
            let counts = try await Queue(database: database).exactCounts()
            #expect(counts.done < 2_000, "it stopped before draining the queue")
        }
    }

    @Test("a stale running row is marked abandoned by the next run of its job; status --check judges every state")
    func staleRunsAndHealthCheck() async throws {
        let database = try TestDatabase.require()
        try await Self.insertRun(
            database,
            job: "nightly",
            state: .running,
            startedAgo: "2 hours",
            heartbeatAgo: "10 minutes"
        )
        var (status, line) = try await Self.check(database, ["--job", "nightly"])
        #expect(status == 7 && line.hasPrefix("CRITICAL: job nightly run ") && line.contains("is stuck"), "\(line)")

        try await WorkerHarness.enqueue(WorkerHarness.pairs(50), into: database)
        let jobs = try Self.jobsDirectory(["nightly.json": #"{"source": "queue", "stale-after": 120}"#])
        try await NymbleSimulator.withRunning(logger: quietLogger) { _, baseURL in
            let child = try EnrichProcess.start(
                ["run", "--job", "\(jobs.path)/nightly.json", "--progress", "off"],
                environment: try WorkerProcessTests.environment(database, baseURL: baseURL)
            )
            let exit = try await child.wait()
            #expect(exit == 0, "\(child.standardError)")
            #expect(child.standardError.contains("marked a dead run abandoned"))
        }
        let runs = try await JobRuns(database: database).recent(limit: 2, jobName: "nightly")
        #expect(runs.map(\.state) == [.succeeded, .abandoned])
        let abandoned = try #require(runs.last)
        #expect(abandoned.finishedAt != nil)
        #expect(abandoned.lastError?.contains("no heartbeat since") == true)
        #expect(abandoned.lastError?.contains("deadhost") == true)

        (status, line) = try await Self.check(database, ["--job", "nightly", "--max-age", "26h"])
        #expect(status == 0 && line.hasPrefix("OK: job nightly run ") && line.contains("succeeded"), "\(line)")
        try await database.client.query(
            """
            UPDATE \(unescaped: Self.quoted(database.configuration.schema)).job_runs
            SET started_at = started_at - interval '2 days' WHERE job_name = 'nightly'
            """,
            logger: quietLogger
        )
        (status, line) = try await Self.check(database, ["--job", "nightly", "--max-age", "26h"])
        #expect(status == 7 && line.contains("more than --max-age 1d2h"), "\(line)")

        // A run row left in each state, one job each.
        try await Self.insertRun(database, job: "failing", state: .failed, lastError: "invalid API credentials")
        try await Self.insertRun(database, job: "stopped", state: .interrupted)
        try await Self.insertRun(database, job: "dead", state: .abandoned, lastError: "no heartbeat since then")
        try await Self.insertRun(database, job: "live", state: .running, heartbeatAgo: "2 seconds")
        let expectations: [(job: String, status: Int32, text: String)] = [
            ("failing", 7, "failed 1h00m ago: invalid API credentials"),
            ("stopped", 7, "was interrupted"),
            ("dead", 7, "was abandoned"),
            ("live", 0, "is running"),
            ("never-scheduled", 7, "CRITICAL: job never-scheduled has never run"),
        ]
        for expectation in expectations {
            (status, line) = try await Self.check(database, ["--job", expectation.job])
            #expect(status == expectation.status && line.contains(expectation.text), "\(expectation.job): \(line)")
            #expect(!line.contains("\n"), "one line")
        }
    }

    @Test(
        "a job file with an unknown key, a wrong type or a bad SQL source: a clear error naming file and key, nothing enqueued",
        arguments: [
            (#"{"source": "queue", "concurency": 4}"#, "concurency: unknown key (known keys: "),
            (
                #"{"source": "queue", "concurrency": "32"}"#,
                #"concurrency: expected a whole number from 1 to 4096, got the string "32""#
            ),
            (#"{"source": "queue", "lease": -5}"#, "lease: expected a number of seconds above 0, got -5"),
            (
                #"{"source": {"sql": "SELEC organization_id, user_id FROM x"}}"#,
                "source.sql failed: syntax error at or near"
            ),
            (
                #"{"source": {"sql": "SELECT a AS organization_id, b AS user_id FROM app_nowhere.t"}}"#,
                #"source.sql failed: relation "app_nowhere.t" does not exist"#
            ),
            (#"{"source": "queue", "concurrency": 4"#, "not valid JSON"),
        ]
    )
    func badJobDefinitions(content: String, message: String) async throws {
        let database = try TestDatabase.require()
        let jobs = try Self.jobsDirectory(["broken.json": content])
        let path = jobs.appendingPathComponent("broken.json").path
        let child = try EnrichProcess.start(
            ["run", "--job", "broken", "--jobs-dir", jobs.path, "--progress", "off"],
            environment: try WorkerProcessTests.environment(database, baseURL: "http://127.0.0.1:9")
        )
        let status = try await child.wait()
        let errors = child.standardError
        #expect(status == 3, "\(errors)")
        #expect(errors.contains("enrich: error: \(path)"), "names the file: \(errors)")
        #expect(errors.contains(message), "\(errors)")
        #expect(!errors.contains("enrich migrate"), "not enrich's table: no migrate hint")
        #expect(!errors.contains(simulatorCredentials.clientSecret))
        let counts = try await Queue(database: database).exactCounts()
        #expect(counts.total == 0, "nothing enqueued")
        if message.contains("source.sql") {
            let run = try #require(try await JobRuns(database: database).recent(limit: 1, jobName: "broken").first)
            #expect(run.state == .failed && run.lastError?.contains("source.sql") == true, "status --check will see it")
        }
    }

    @Test("--metrics-port serves the run's counters over HTTP; every JSON log line of the run carries its run id")
    func metricsAndLogs() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(200, malformedEvery: 50), into: database)
        try await NymbleSimulator.withRunning(logger: quietLogger) { _, baseURL in
            let child = try EnrichProcess.start(
                [
                    "run", "--follow", "--metrics-port", "0", "--metrics-host", "127.0.0.1", "--heartbeat", "0.5",
                    "--log-format", "json", "--progress", "off",
                ],
                environment: try WorkerProcessTests.environment(database, baseURL: baseURL)
            )
            defer { if child.process.isRunning { child.signal(SIGKILL) } }
            try await WorkerProcessTests.waitForDone(196, in: database, child: child)
            let url = try #require(try await Self.metricsURL(child))
            var body = ""
            let expected = [
                #"enrich_items_total{result="done"} 196"#, #"enrich_items_total{result="failed"} 4"#,
                #"enrich_item_errors_total{reason="bad_request"} 4"#, #"enrich_api_calls_total{outcome="ok"} 196"#,
                #"enrich_api_calls_total{outcome="bad_request"} 4"#, "enrich_logins_total 1",
                #"enrich_queue_items{state="done"} 196"#, #"enrich_queue_items{state="pending"} 0"#,
                "enrich_api_throttled_total 0", "enrich_throttle_rate 0", "enrich_api_call_duration_seconds_count 200",
                "enrich_fleet_workers 1", "enrich_fleet_token_generation 1", "enrich_fleet_logins_last_hour 1",
                "enrich_fleet_paused_seconds 0",
            ]
            let deadline = ContinuousClock.now + .seconds(15)
            while ContinuousClock.now < deadline {
                let response = try await HTTPClient.shared.get(url: url).get()
                #expect(response.status == .ok)
                body = response.body.map { String(buffer: $0) } ?? ""
                if expected.allSatisfy(body.contains) { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            for line in expected { #expect(body.contains(line), "\(line) missing from:\n\(body)") }
            // The status page is served next to the metrics.
            let page = try await HTTPClient.shared.get(url: url.replacingOccurrences(of: "/metrics", with: "/")).get()
            let html = page.body.map { String(buffer: $0) } ?? ""
            #expect(
                page.status == .ok && html.contains("<title>enrich · ") && html.contains("Failures by reason (4 rows)")
            )

            child.signal(SIGTERM)
            let status = try await child.wait()
            #expect(status == 0, "--follow stops with 0 on SIGTERM")
            let lines = child.standardError.split(separator: "\n").map(String.init)
            let objects = lines.compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
            }
            #expect(objects.count == lines.count, "every log line is a JSON object")
            let messages = objects.map { $0["msg"] as? String ?? "" }
            let start = try #require(messages.firstIndex(of: "run started"))
            let end = try #require(messages.lastIndex(of: "run finished"))
            let during = objects[start...end]
            #expect(during.count >= 3)
            let missing = during.filter { $0["run_id"] == nil }.map { $0["msg"] as? String ?? "?" }
            #expect(missing.isEmpty, "lines of the run without run_id: \(missing)")
            #expect(during.contains { $0["msg"] as? String == "logged in" }, "the token store's line is there")
            #expect(!child.standardError.contains(simulatorCredentials.clientSecret))
        }
    }

    /// The metrics URL the child logged ("serving metrics", with the port it bound).
    static func metricsURL(_ child: EnrichProcess) async throws -> String? {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            for line in child.standardError.split(separator: "\n") where line.contains("serving metrics") {
                if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                    let url = object["url"] as? String
                {
                    return url
                }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("no 'serving metrics' line: \(child.standardError)")
        return nil
    }
}
