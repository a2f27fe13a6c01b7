import EnrichQueue
import EnrichToken
import EnrichWorker
import Foundation
import Logging
import NymbleAPI
import NymbleSimulator
import PostgresNIO
import ServiceLifecycle
import Testing

// Serialized: each test loads both cores (PostgreSQL, simulator, worker), and the rate-limit test needs the
// limit, not CPU starvation, to be what binds its throughput.
@Suite(
    "Worker end to end: real PostgreSQL, the simulator over loopback",
    .serialized,
    .freshSchema,
    .timeLimit(.minutes(3))
)
struct WorkerTests {
    @Test(
        "10,000 pairs: every row done with exactly the simulator's context, malformed ids failed with the 400 reason, one login"
    )
    func drainsTenThousandPairs() async throws {
        let database = try TestDatabase.require()
        let pairs = WorkerHarness.pairs(10_000, malformedEvery: 250)
        try await WorkerHarness.enqueue(pairs, into: database)
        try await withSimulatorClient { simulator, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration()
            )
            #expect(report.state == .succeeded)
            #expect(report.statistics.counters.succeeded == 9_960)
            #expect(report.statistics.counters.failed == 40)
            #expect(report.logins == 1)
            let stats = simulator.stats()
            #expect(stats.logins == 1)
            #expect(stats.access200 == 9_960 && stats.access400 == 40 && stats.access401 == 0)

            let rows = try await WorkerHarness.rows(database)
            WorkerHarness.expectAllSettled(rows, expectedCount: 10_000)
            let failed = rows.filter { $0.state == "failed" }
            #expect(failed.count == 40)
            #expect(failed.allSatisfy { $0.pair.userId.hasPrefix("bad user") && $0.attempts == 1 })
            #expect(failed.allSatisfy { $0.lastError?.contains("400") == true })
            // Nulls from the API stay nulls (the directory answers some all-null and some null tiers).
            let done = rows.filter { $0.state == "done" }
            #expect(done.contains { $0.context.customerNumber == nil })
            #expect(done.contains { $0.context.priceTier == nil && $0.context.customerNumber != nil })

            let run = try #require(try await JobRuns(database: database).run(id: report.runID))
            #expect(run.state == .succeeded && run.finishedAt != nil)
            #expect(run.counters.succeeded == 9_960 && run.counters.failed == 40 && run.counters.logins == 1)
            #expect(run.totalItems == 10_000)
        }
    }

    @Test(
        "a rate-limited API: all rows done, 429s a small share of calls, throughput near the limit",
        arguments: [
            SimulatorConfiguration.RetryAfterStyle.seconds, .httpDate, .absent,
        ]
    )
    func adaptsToAnUnknownLimit(style: SimulatorConfiguration.RetryAfterStyle) async throws {
        let database = try TestDatabase.require()
        // Well below what the runner reaches on a loaded 2-core machine, so the limit is what binds.
        let limit = 100.0
        // 20 s of work at the limit: finding the limit costs a few Retry-After pauses (>= 1 s each) at the
        // start, which a 10 s run would let dominate the measure.
        let rows = 2_000
        try await WorkerHarness.enqueue(WorkerHarness.pairs(rows), into: database)
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.accessRate = limit
        simulatorConfiguration.accessBurst = 10
        simulatorConfiguration.retryAfterStyle = style
        try await withSimulatorClient(simulatorConfiguration) { simulator, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration()
            )
            let stats = simulator.stats()
            let share = Double(stats.access429) / Double(stats.accessCalls)
            let throughput = Double(rows) / report.elapsed.inSeconds
            print(
                "rate limit \(Int(limit))/s, Retry-After \(style): \(Int(throughput)) rows/s, \(stats.access429) 429s of \(stats.accessCalls) calls (\(String(format: "%.1f", share * 100))%), \(report.statistics.counters.retried) retried, \(String(format: "%.1f", report.elapsed.inSeconds)) s"
            )
            #expect(report.state == .succeeded && report.statistics.counters.succeeded == Int64(rows))
            #expect(stats.access429 > 0, "the limit was never reached: the test does not test anything")
            #expect(share < 0.10)
            // A loose bound for a shared CI box; the benchmark measures the real share of the limit. The worker
            // and the simulator share this process and its two cooperative threads with every suite running in
            // parallel: with two busy loops beside it, a run fell to 41 rows/s here (CI once saw 47), while
            // the same run as separate processes held 69–74 rows/s. Half the limit was too tight for that.
            #expect(throughput > limit * 0.35)
            WorkerHarness.expectAllSettled(try await WorkerHarness.rows(database), expectedCount: rows)
        }
    }

    @Test("rows taken over more than --max-takeovers times are failed by the next run and counted in it")
    func rowsTakenOverTooOftenAreCounted() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(10), into: database, maxAttempts: 1)
        let queue = Queue(database: database)
        _ = try await queue.claim(owner: "crashed", limit: 4, lease: .milliseconds(1)).items
        try await Task.sleep(for: .milliseconds(20))
        _ = try await queue.claim(owner: "crashed again", limit: 4, lease: .milliseconds(1)).items
        try await Task.sleep(for: .milliseconds(20))
        try await withSimulatorClient { _, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration { $0.maxTakeovers = 1 }
            )
            #expect(report.state == .succeeded)
            #expect(report.statistics.counters.succeeded == 6 && report.statistics.counters.failed == 4)
        }
        let run = try #require(try await JobRuns(database: database).recent(limit: 1).first)
        #expect(run.counters.failed == 4, "the job runs row and so the exit code see them")
    }

    @Test("--rate at the API's limit: no 429 at all")
    func knownRateNeverTriggers429() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(800), into: database)
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.accessRate = 200
        try await withSimulatorClient(simulatorConfiguration) { simulator, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration { $0.rateLimit = 200 }
            )
            #expect(report.state == .succeeded && report.statistics.counters.succeeded == 800)
            #expect(simulator.stats().access429 == 0)
            #expect(report.elapsed > .seconds(2.5), "800 calls at 200/s cannot take less than ~3 s")
        }
    }

    @Test("10% server errors and dropped connections: every row done or failed with a reason, none lost or stuck")
    func survivesFaults() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(2_000), into: database, maxAttempts: 3)
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.serverErrorRate = 0.05
        simulatorConfiguration.dropRate = 0.05
        try await withSimulatorClient(simulatorConfiguration) { simulator, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration()
            )
            let stats = simulator.stats()
            #expect(report.state == .succeeded)
            #expect(stats.access5xx > 50 && stats.accessDropped > 50)
            #expect(report.statistics.counters.retried > 100)
            let rows = try await WorkerHarness.rows(database)
            WorkerHarness.expectAllSettled(rows, expectedCount: 2_000)
            let failed = rows.filter { $0.state == "failed" }
            // Three attempts at 10% failure each: about 2 rows in 2,000 fail for good, each with its reason.
            #expect(failed.count < 20)
            #expect(failed.allSatisfy { $0.attempts == 3 })
            #expect(report.statistics.counters.succeeded + report.statistics.counters.failed == 2_000)
        }
    }

    @Test("tokens expiring every 3 s during a run: renewed ahead of expiry, no 401 storm")
    func shortLivedTokens() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(2_000), into: database)
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.tokenLifetime = .seconds(3)
        try await withSimulatorClient(simulatorConfiguration) { simulator, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration { $0.rateLimit = 250 }
            )
            let stats = simulator.stats()
            let seconds = report.elapsed.inSeconds
            print(
                "3 s tokens over \(String(format: "%.1f", seconds)) s: \(stats.logins) logins, \(stats.access401) 401s"
            )
            #expect(report.state == .succeeded && report.statistics.counters.succeeded == 2_000)
            // Renewal 0.3 s before expiry: one login per 2.7 s of run, plus the first.
            #expect(stats.logins <= Int((seconds / 2.7).rounded(.up)) + 1)
            #expect(stats.logins >= 3)
            #expect(stats.access401 <= 3 && stats.loginsThrottled == 0)
        }
    }

    @Test("a claim batch smaller than the concurrency still drains the queue")
    func smallClaimBatch() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(300), into: database)
        try await withSimulatorClient { _, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration {
                    $0.concurrency = 16
                    $0.claimBatch = 5
                }
            )
            #expect(report.state == .succeeded && report.statistics.counters.succeeded == 300)
            #expect(report.statistics.counters.claimed == 300)
        }
    }

    @Test("invalid credentials: the run fails at once with a clear error, every row back to pending, no secret")
    func invalidCredentials() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(500), into: database)
        let wrong = NymbleCredentials(
            orgCode: "org_12345",
            clientId: "sdaf43tfsdg45dg",
            clientSecret: "not-the-secret-42"
        )
        let capture = LogCapture()
        try await withSimulatorClient { simulator, client in
            let report = try await WorkerHarness.run(
                database,
                client: client,
                configuration: WorkerHarness.configuration(),
                credentials: wrong,
                logger: capture.logger()
            )
            #expect(report.state == .failed)
            let error = try #require(report.error as? WorkerError)
            #expect(error.code == .login)
            #expect("\(error)".contains("rejected the credentials"))
            #expect(simulator.stats().logins == 0 && simulator.stats().loginsUnauthorized == 1)
            #expect(simulator.stats().accessCalls == 0)
            let counts = try await Queue(database: database).exactCounts()
            #expect(counts.pending == 500 && counts.running == 0)
            let rows = try await WorkerHarness.rows(database)
            #expect(rows.allSatisfy { $0.attempts == 0 })
            let run = try #require(try await JobRuns(database: database).run(id: report.runID))
            #expect(run.state == .failed && run.lastError?.contains("rejected the credentials") == true)
            let everything = capture.all.joined(separator: "\n") + (run.lastError ?? "") + "\(error)"
            #expect(!everything.contains("not-the-secret-42"))
        }
    }

    @Test("--follow wakes on NOTIFY within the poll interval, and a graceful shutdown records the run interrupted")
    func followModeWakesOnNotify() async throws {
        let database = try TestDatabase.require()
        try await withSimulatorClient { simulator, client in
            let store = SharedTokenStore(clock: ContinuousClock(), logger: quietLogger) {
                try await client.login(simulatorCredentials)
            }
            let worker = Worker(
                configuration: WorkerHarness.configuration {
                    $0.follow = true
                    $0.pollInterval = .seconds(60)
                    $0.heartbeatInterval = .seconds(10)
                },
                database: database,
                api: client,
                tokens: store,
                logger: quietLogger
            )
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup)],
                    logger: quietLogger
                )
            )
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await Task.sleep(for: .seconds(1))
                let clock = ContinuousClock()
                let enqueued = clock.now
                try await WorkerHarness.enqueue(WorkerHarness.pairs(300), into: database)
                var done: Int64 = 0
                while done < 300 && enqueued.duration(to: clock.now) < .seconds(20) {
                    try await Task.sleep(for: .milliseconds(50))
                    done = try await Queue(database: database).exactCounts().done
                }
                let pickup = enqueued.duration(to: clock.now)
                #expect(done == 300)
                #expect(
                    pickup < .seconds(20),
                    "only the 60 s poll could have found the rows: NOTIFY did not wake the worker"
                )
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            let runs = try await JobRuns(database: database).recent(limit: 1)
            #expect(runs.first?.state == .interrupted)
            #expect(simulator.stats().access200 == 300)
        }
    }
}

@Suite("Worker process: signals and crashes", .freshSchema, .timeLimit(.minutes(3)))
struct WorkerProcessTests {
    static func environment(_ database: Database, baseURL: String) throws -> [String: String] {
        [
            "DATABASE_URL": try TestDatabase.url(),
            "ENRICH_SCHEMA": database.configuration.schema,
            "NYMBLE_BASE_URL": baseURL,
            "NYMBLE_ORG_CODE": simulatorCredentials.orgCode,
            "NYMBLE_CLIENT_ID": simulatorCredentials.clientId,
            "NYMBLE_CLIENT_SECRET": simulatorCredentials.clientSecret,
            "ENRICH_LOG_LEVEL": "info",
        ]
    }

    /// Waits until at least `count` rows are done (the child is making progress).
    static func waitForDone(_ count: Int64, in database: Database, child: EnrichProcess) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while try await Queue(database: database).exactCounts().done < count {
            guard child.process.isRunning, ContinuousClock.now < deadline else {
                Issue.record("the child made no progress: \(child.standardError)")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test("SIGKILL mid-run, then run again: every row done exactly once with the right values")
    func killAndRerun() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(3_000), into: database)
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.accessRate = 600
        try await NymbleSimulator.withRunning(simulatorConfiguration, logger: quietLogger) { simulator, baseURL in
            let child = try EnrichProcess.start(
                ["run", "--lease", "5", "--heartbeat", "1", "--progress", "off"],
                environment: try Self.environment(database, baseURL: baseURL)
            )
            try await Self.waitForDone(600, in: database, child: child)
            child.signal(SIGKILL)
            _ = try await child.wait()
            let before = try await Queue(database: database).exactCounts()
            #expect(before.done >= 600 && before.done < 3_000)
            #expect(before.running > 0, "the killed worker held leased rows")

            try await NymbleClient.withClient(configuration: .init(baseURL: baseURL), logger: quietLogger) { client in
                let report = try await WorkerHarness.run(
                    database,
                    client: client,
                    configuration: WorkerHarness.configuration()
                )
                #expect(report.state == .succeeded)
                // Rows done before the crash were not done again; the killed worker's leased rows were reclaimed.
                #expect(Int64(before.done) + report.statistics.counters.succeeded == 3_000)
            }
            let rows = try await WorkerHarness.rows(database)
            WorkerHarness.expectAllSettled(rows, expectedCount: 3_000)
            #expect(rows.allSatisfy { $0.state == "done" })
            #expect(simulator.stats().access200 >= 3_000)
        }
    }

    @Test("SIGTERM mid-run: exit 6, run interrupted, no row left running, a rerun finishes the rest")
    func terminateAndRerun() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(3_000), into: database)
        var simulatorConfiguration = SimulatorConfiguration()
        simulatorConfiguration.accessRate = 600
        simulatorConfiguration.latency = .init(minimum: .milliseconds(20), maximum: .milliseconds(40))
        try await NymbleSimulator.withRunning(simulatorConfiguration, logger: quietLogger) { _, baseURL in
            let child = try EnrichProcess.start(
                ["run", "--shutdown-grace", "10", "--progress", "log"],
                environment: try Self.environment(database, baseURL: baseURL)
            )
            try await Self.waitForDone(300, in: database, child: child)
            child.signal(SIGTERM)
            let status = try await child.wait()
            let output = child.standardOutput + child.standardError
            #expect(status == 6, "\(output)")
            #expect(output.contains("interrupted"))
            #expect(!output.contains(simulatorCredentials.clientSecret))
            let counts = try await Queue(database: database).exactCounts()
            #expect(counts.running == 0)
            #expect(counts.done >= 300 && counts.done < 3_000)
            let run = try #require(try await JobRuns(database: database).recent(limit: 1).first)
            #expect(run.state == .interrupted)
            #expect(run.counters.succeeded == counts.done)

            try await NymbleClient.withClient(configuration: .init(baseURL: baseURL), logger: quietLogger) { client in
                let report = try await WorkerHarness.run(
                    database,
                    client: client,
                    configuration: WorkerHarness.configuration()
                )
                #expect(report.statistics.counters.succeeded == 3_000 - counts.done)
            }
            WorkerHarness.expectAllSettled(try await WorkerHarness.rows(database), expectedCount: 3_000)
        }
    }
}
