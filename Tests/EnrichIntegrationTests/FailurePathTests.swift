import EnrichQueue
import EnrichToken
import EnrichWorker
import Foundation
import Logging
import NymbleAPI
import NymbleSimulator
import PostgresNIO
import Synchronization
import Testing

/// The failure campaign kept in the suite: PostgreSQL restarted, stopped and frozen under load, signals
/// while a call or the database never answers, crash loops, killed runs, rows added mid-run, and
/// configuration mistakes. Through the built binary wherever a process boundary matters.
@Suite("Failure paths", .serialized, .timeLimit(.minutes(4)))
struct FailurePathTests {
    /// The environment for `enrich` against `url` and `schema`.
    static func environment(url: String, schema: String, baseURL: String) -> [String: String] {
        [
            "DATABASE_URL": url,
            "ENRICH_SCHEMA": schema,
            "NYMBLE_BASE_URL": baseURL,
            "NYMBLE_ORG_CODE": simulatorCredentials.orgCode,
            "NYMBLE_CLIENT_ID": simulatorCredentials.clientId,
            "NYMBLE_CLIENT_SECRET": simulatorCredentials.clientSecret,
            "ENRICH_LOG_LEVEL": "info",
        ]
    }

    /// Runs `body` with a migrated database on a private cluster (one the test may stop and restart).
    static func withPrivateDatabase<T: Sendable>(
        _ body: (PrivateCluster, Database) async throws -> T
    ) async throws -> T {
        try await PrivateCluster.withCluster { cluster in
            let configuration = try DatabaseConfiguration(
                url: cluster.url,
                connectTimeout: .seconds(2),
                statementTimeout: .seconds(5)
            )
            return try await Database.withDatabase(configuration, logger: TestDatabase.logger) { database in
                try await Migrator(database: database).migrate()
                return try await body(cluster, database)
            }
        }
    }

    /// Rows done so far, or nil while the database does not answer.
    static func done(_ database: Database) async -> Int64? {
        try? await Queue(database: database).exactCounts().done
    }

    /// Waits until `count` rows are done (polling through outages).
    static func waitForDone(_ count: Int64, _ database: Database, child: EnrichProcess) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while (await done(database) ?? 0) < count {
            guard child.process.isRunning, ContinuousClock.now < deadline else {
                Issue.record("the child made no progress: \(child.standardError)")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test("PostgreSQL restarted, then stopped and started again under load: the run finishes, every row exact")
    func restartsUnderLoad() async throws {
        try await Self.withPrivateDatabase { cluster, database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(4_000), into: database)
            var simulator = SimulatorConfiguration()
            simulator.accessRate = 400
            simulator.serverErrorRate = 0.02
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { _, baseURL in
                let child = try EnrichProcess.start(
                    ["run", "--concurrency", "64", "--heartbeat", "1", "--progress", "off"],
                    environment: Self.environment(url: cluster.url, schema: "enrich", baseURL: baseURL)
                )
                try await Self.waitForDone(500, database, child: child)
                try await cluster.restart()
                try await Self.waitForDone(1_000, database, child: child)
                try await cluster.stop()
                try await Task.sleep(for: .seconds(3))
                try await cluster.start()
                let status = try await child.wait(timeout: .seconds(90))
                #expect(status == 0, "\(child.standardError.suffix(3_000))")
            }
            let rows = try await WorkerHarness.rows(database)
            WorkerHarness.expectAllSettled(rows, expectedCount: 4_000)
            #expect(rows.allSatisfy { $0.state == "done" })
        }
    }

    @Test(
        "PostgreSQL stopped: the run gives up within --db-outage-limit + 5 s naming host:port and the cause; the next run marks it abandoned with its counters"
    )
    func outageLimitHolds() async throws {
        try await Self.withPrivateDatabase { cluster, database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(3_000), into: database)
            var simulator = SimulatorConfiguration()
            simulator.accessRate = 300
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { _, baseURL in
                let environment = Self.environment(url: cluster.url, schema: "enrich", baseURL: baseURL)
                let child = try EnrichProcess.start(
                    ["run", "--db-outage-limit", "5", "--heartbeat", "1", "--progress", "off"],
                    environment: environment
                )
                try await Self.waitForDone(300, database, child: child)
                try await cluster.stop()
                let stopped = ContinuousClock.now
                let status = try await child.wait(timeout: .seconds(60))
                let took = stopped.duration(to: .now)
                #expect(status == 2, "\(child.standardError.suffix(2_000))")
                #expect(
                    took < .seconds(10),
                    "gave up \(took) after the stop (limit 5 s): \(child.standardError.suffix(4_000))"
                )
                #expect(took > .seconds(3), "gave up \(took) after the stop, before the limit")
                let message = child.standardError
                #expect(message.contains("127.0.0.1:\(cluster.port)"), "\(message.suffix(1_000))")
                #expect(message.contains("connection refused"), "\(message.suffix(1_000))")
                #expect(message.contains("unreachable for"))

                try await cluster.start()
                let next = try EnrichProcess.start(
                    ["run", "--stale-after", "1", "--db-outage-limit", "1", "--heartbeat", "0.4", "--progress", "off"],
                    environment: environment
                )
                #expect(try await next.wait(timeout: .seconds(60)) == 0, "\(next.standardError.suffix(2_000))")
            }
            let runs = try await JobRuns(database: database).recent(limit: 2)
            let dead = try #require(runs.last)
            #expect(dead.state == .abandoned, "\(dead)")
            #expect(dead.counters.succeeded >= 300, "counted from the rows it wrote: \(dead.counters)")
            #expect(runs.first?.state == .succeeded)
            WorkerHarness.expectAllSettled(try await WorkerHarness.rows(database), expectedCount: 3_000)
        }
    }

    @Test("SIGTERM while every call hangs: exit 6 within the grace + 5 s, the run interrupted, its rows released")
    func sigtermWithCallsThatNeverAnswer() async throws {
        try await TestDatabase.withFreshSchema { database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(20), into: database)
            var simulator = SimulatorConfiguration()
            simulator.slowRate = 1
            simulator.slowDelay = .seconds(600)
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { server, baseURL in
                let child = try EnrichProcess.start(
                    [
                        "run", "--concurrency", "4", "--shutdown-grace", "2", "--request-timeout", "300",
                        "--progress", "off",
                    ],
                    environment: try WorkerProcessTests.environment(database, baseURL: baseURL)
                )
                let deadline = ContinuousClock.now + .seconds(30)
                while server.stats().inFlight < 4 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(server.stats().inFlight == 4, "four calls hang in the API")
                child.signal(SIGTERM)
                let signalled = ContinuousClock.now
                let status = try await child.wait(timeout: .seconds(60))
                let took = signalled.duration(to: .now)
                #expect(status == 6, "\(child.standardError.suffix(2_000))")
                #expect(took < .seconds(7), "exited \(took) after SIGTERM (grace 2 s)")
            }
            let counts = try await Queue(database: database).exactCounts()
            #expect(counts == QueueCounts(pending: 20), "the hanging calls' rows were released: \(counts)")
            let run = try #require(try await JobRuns(database: database).recent(limit: 1).first)
            #expect(run.state == .interrupted)
        }
    }

    @Test("SIGTERM while PostgreSQL never answers (frozen): the process exits within the grace + 5 s")
    func sigtermWithFrozenDatabase() async throws {
        try await Self.withPrivateDatabase { cluster, database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(3_000), into: database)
            var simulator = SimulatorConfiguration()
            simulator.accessRate = 300
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { _, baseURL in
                let child = try EnrichProcess.start(
                    ["run", "--shutdown-grace", "2", "--heartbeat", "1", "--progress", "off"],
                    environment: Self.environment(url: cluster.url, schema: "enrich", baseURL: baseURL)
                )
                try await Self.waitForDone(200, database, child: child)
                try cluster.freeze(true)
                defer { try? cluster.freeze(false) }
                try await Task.sleep(for: .seconds(1))
                child.signal(SIGTERM)
                let signalled = ContinuousClock.now
                let status = try await child.wait(timeout: .seconds(60))
                let took = signalled.duration(to: .now)
                #expect(status == 6, "\(child.standardError.suffix(2_000))")
                #expect(took < .seconds(7.5), "exited \(took) after SIGTERM (grace 2 s)")
            }
        }
    }

    @Test("a crash loop (five SIGKILLs mid-run) fails no row and spends no attempt on rows never sent")
    func crashLoop() async throws {
        try await TestDatabase.withFreshSchema { database in
            try await TestDatabase.$current.withValue(database) {
                try await TestDatabase.waitUntilServerUp(for: JobRuns.restartGrace)
            }
            try await WorkerHarness.enqueue(WorkerHarness.pairs(600), into: database)
            var simulator = SimulatorConfiguration()
            simulator.accessRate = 100
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { server, baseURL in
                let environment = try WorkerProcessTests.environment(database, baseURL: baseURL)
                let arguments = ["run", "--concurrency", "8", "--rate", "100", "--progress", "off"]
                for cycle in 1...5 {
                    let before = await Self.done(database) ?? 0
                    let child = try EnrichProcess.start(arguments, environment: environment)
                    try await Self.waitForDone(before + 20, database, child: child)
                    child.signal(SIGKILL)
                    _ = try await child.wait()
                    #expect(try await Queue(database: database).exactCounts().failed == 0, "cycle \(cycle)")
                }
                let last = try EnrichProcess.start(arguments, environment: environment)
                #expect(try await last.wait(timeout: .seconds(60)) == 0, "\(last.standardError.suffix(2_000))")
                // Every row was called about once: the rows held at each kill were taken over, not re-failed.
                #expect(server.stats().access200 < 600 + 5 * 8 * 2, "\(server.stats())")
            }
            let rows = try await WorkerHarness.rows(database)
            WorkerHarness.expectAllSettled(rows, expectedCount: 600)
            #expect(rows.allSatisfy { $0.state == "done" })
            #expect(rows.allSatisfy { $0.attempts == 1 }, "one written call per row, whatever the kills")
            let runs = try await JobRuns(database: database).recent(limit: 6)
            #expect(runs.map(\.state) == [.succeeded] + Array(repeating: .abandoned, count: 5))
        }
    }

    @Test("a killed plain run is marked abandoned by the next run, with the counters of the rows it wrote")
    func killedPlainRunIsAbandoned() async throws {
        try await TestDatabase.withFreshSchema { database in
            try await TestDatabase.$current.withValue(database) {
                try await TestDatabase.waitUntilServerUp(for: JobRuns.restartGrace)
            }
            try await WorkerHarness.enqueue(WorkerHarness.pairs(2_000), into: database)
            var simulator = SimulatorConfiguration()
            simulator.accessRate = 500
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { _, baseURL in
                let environment = try WorkerProcessTests.environment(database, baseURL: baseURL)
                // A heartbeat too slow to have recorded any counter before the kill.
                let killed = try EnrichProcess.start(
                    ["run", "--heartbeat", "30", "--lease", "120", "--progress", "off"],
                    environment: environment
                )
                try await Self.waitForDone(300, database, child: killed)
                killed.signal(SIGKILL)
                _ = try await killed.wait()
                let status = try EnrichProcess.start(["status"], environment: environment)
                _ = try await status.wait()
                #expect(status.standardOutput.contains("running (dead: process gone)"), "\(status.standardOutput)")

                let started = ContinuousClock.now
                let next = try EnrichProcess.start(["run", "--progress", "off"], environment: environment)
                #expect(try await next.wait() == 0, "\(next.standardError.suffix(2_000))")
                #expect(started.duration(to: .now) < .seconds(30), "no wait for the 120 s leases")
            }
            let runs = try await JobRuns(database: database).recent(limit: 2)
            let dead = try #require(runs.last)
            #expect(dead.state == .abandoned)
            #expect(dead.counters.succeeded >= 300, "\(dead.counters)")
            #expect(dead.lastError?.contains("its process is gone") == true)
            WorkerHarness.expectAllSettled(try await WorkerHarness.rows(database), expectedCount: 2_000)
        }
    }

    @Test("rows added mid-run: progress never passes 100% and the run's total is what it finished")
    func progressWithRowsAddedMidRun() async throws {
        try await TestDatabase.withFreshSchema { database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(800, prefix: "a"), into: database)
            var simulator = SimulatorConfiguration()
            simulator.accessRate = 400
            let seen = Mutex<[(finished: Int64, total: Int64?)]>([])
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { _, baseURL in
                try await NymbleClient.withClient(configuration: .init(baseURL: baseURL), logger: quietLogger) {
                    client in
                    let store = SharedTokenStore(clock: ContinuousClock(), logger: quietLogger) {
                        try await client.login(simulatorCredentials)
                    }
                    let worker = Worker(
                        configuration: WorkerHarness.configuration {
                            $0.heartbeatInterval = .milliseconds(300)
                            $0.progressInterval = .milliseconds(100)
                            $0.rateLimit = 400
                        },
                        database: database,
                        api: client,
                        tokens: store,
                        logger: quietLogger,
                        onProgress: { progress in
                            let counters = progress.statistics.counters
                            seen.withLock { $0.append((counters.succeeded + counters.failed, progress.totalItems)) }
                        }
                    )
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { _ = try await worker.execute() }
                        try await Task.sleep(for: .milliseconds(800))
                        try await WorkerHarness.enqueue(WorkerHarness.pairs(800, prefix: "b"), into: database)
                        try await group.waitForAll()
                    }
                }
            }
            let samples = seen.withLock { $0 }
            #expect(samples.count > 5)
            for sample in samples {
                #expect(sample.finished <= sample.total ?? .max, "progress above 100%: \(sample)")
            }
            #expect(samples.contains { ($0.total ?? 0) > 800 }, "the total grew with the added rows")
            let run = try #require(try await JobRuns(database: database).recent(limit: 1).first)
            #expect(run.counters.succeeded == 1_600 && run.totalItems == 1_600, "\(run)")
        }
    }

    @Test("a malformed API URL is a configuration error (exit 4) in under a second, naming the variable")
    func malformedAPIURL() async throws {
        try await TestDatabase.withFreshSchema { database in
            let started = ContinuousClock.now
            let child = try EnrichProcess.start(
                ["run", "--progress", "off"],
                environment: try WorkerProcessTests.environment(database, baseURL: "not a url")
            )
            let status = try await child.wait()
            #expect(status == 4, "\(child.standardError)")
            #expect(started.duration(to: .now) < .seconds(1.5), "process start included")
            #expect(
                child.standardError.contains("environment variable NYMBLE_BASE_URL: 'not a url' is not an API base URL")
            )
            #expect(try await JobRuns(database: database).recent(limit: 1).isEmpty, "nothing started")
        }
    }

    @Test("an API that refuses connections: the run fails within seconds, saying connection refused at host:port")
    func apiRefusesConnections() async throws {
        try await TestDatabase.withFreshSchema { database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(10), into: database)
            let started = ContinuousClock.now
            let child = try EnrichProcess.start(
                ["run", "--progress", "off"],
                environment: try WorkerProcessTests.environment(database, baseURL: "http://127.0.0.1:9")
            )
            let status = try await child.wait()
            #expect(status == 2, "\(child.standardError)")
            #expect(started.duration(to: .now) < .seconds(5))
            #expect(child.standardError.contains("cannot connect to 127.0.0.1:9: connection refused"))
            #expect(try await Queue(database: database).exactCounts() == QueueCounts(pending: 10), "nothing lost")
        }
    }
}
