import ArgumentParser
import EnrichQueue
import EnrichWorker
import Foundation
import Testing

@testable import EnrichCLI

@Suite("enrich run settings: flags, environment, defaults")
struct RunSettingsTests {
    let credentials = [
        "NYMBLE_ORG_CODE": "org_1", "NYMBLE_CLIENT_ID": "client_1", "NYMBLE_CLIENT_SECRET": "s3cret-value",
    ]

    @Test("defaults: drain mode, 32 tasks, adaptive rate, rows keep their own attempts, pool sized to the tasks")
    func defaults() throws {
        let settings = try RunOptions.parse([]).settings(Environment(credentials))
        #expect(!settings.worker.follow && settings.worker.concurrency == 32)
        #expect(settings.worker.rateLimit == nil && settings.worker.maxAttempts == nil)
        #expect(settings.worker.lease == .seconds(120) && settings.worker.shutdownGrace == .seconds(30))
        #expect(settings.worker.effectiveClaimBatch == 500)
        #expect(settings.client.maximumConnections == 32)
        #expect(settings.client.baseURL == "https://api.achievemomentum.com")
        #expect(settings.credentials.clientSecret == "s3cret-value")
    }

    @Test("flags win over environment variables, which win over defaults")
    func precedence() throws {
        var environment = credentials
        environment["ENRICH_CONCURRENCY"] = "8"
        environment["ENRICH_RATE"] = "250"
        environment["ENRICH_LEASE"] = "45"
        environment["ENRICH_FOLLOW"] = "1"
        environment["NYMBLE_BASE_URL"] = "http://127.0.0.1:9"
        environment["ENRICH_TRIGGER"] = "cron"
        let settings = try RunOptions.parse(["--concurrency", "64", "--shutdown-grace", "0"]).settings(
            Environment(environment)
        )
        #expect(settings.worker.concurrency == 64 && settings.client.maximumConnections == 64)
        #expect(settings.worker.rateLimit == 250 && settings.worker.lease == .seconds(45))
        #expect(settings.worker.follow && settings.worker.trigger == .cron)
        #expect(settings.worker.shutdownGrace == .zero)
        #expect(settings.client.baseURL == "http://127.0.0.1:9")
    }

    @Test("the secret can come from a file (NYMBLE_CLIENT_SECRET_FILE)")
    func secretFromFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID().uuidString)").path
        try "from-file-secret\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        var environment = credentials
        environment["NYMBLE_CLIENT_SECRET"] = nil
        environment["NYMBLE_CLIENT_SECRET_FILE"] = path
        let settings = try RunOptions.parse([]).settings(Environment(environment))
        #expect(settings.credentials.clientSecret == "from-file-secret")
    }

    @Test(
        "bad values are named: flag or variable, and what is wrong",
        arguments: [
            (["--concurrency", "0"], [String: String](), "--concurrency"),
            (["--lease", "2"], [:], "--lease"),
            (["--lease=-1"], [:], "--lease"),
            (["--trigger", "daily"], [:], "--trigger"),
            (["--progress", "loud"], [:], "--progress"),
            (["--retry-base", "10", "--retry-cap", "1"], [:], "--retry-cap"),
            ([], ["ENRICH_RATE": "fast"], "ENRICH_RATE"),
            ([], ["ENRICH_SHUTDOWN_GRACE": "soon"], "ENRICH_SHUTDOWN_GRACE"),
        ]
    )
    func badValues(arguments: [String], environment: [String: String], named: String) throws {
        let merged = credentials.merging(environment) { _, new in new }
        do {
            _ = try RunOptions.parse(arguments).settings(Environment(merged))
            Issue.record("accepted \(arguments) \(environment)")
        } catch {
            #expect("\(error)".contains(named), "\(error)")
        }
    }

    @Test("missing credentials name the variables to set, and never echo a secret")
    func missingCredentials() throws {
        var environment = credentials
        environment["NYMBLE_CLIENT_SECRET"] = nil
        #expect(throws: ConfigurationError.self) { try RunOptions.parse([]).settings(Environment(environment)) }
        do {
            _ = try RunOptions.parse([]).settings(Environment(environment))
        } catch {
            #expect("\(error)".contains("NYMBLE_CLIENT_SECRET"))
        }
        do {
            _ = try RunOptions.parse([]).settings(Environment(["NYMBLE_CLIENT_SECRET": "s3cret-value"]))
            Issue.record("accepted a run without org code and client id")
        } catch {
            #expect("\(error)".contains("NYMBLE_ORG_CODE") && !"\(error)".contains("s3cret-value"))
        }
    }

    @Test("the progress line shows done/total, rate, 429s and ETA")
    func progressLine() {
        var snapshot = RunAccounting.Snapshot()
        snapshot.counters.succeeded = 4_000
        snapshot.counters.failed = 210
        snapshot.counters.throttled = 3
        let line = ProgressPrinter.line(
            WorkerProgress(
                runID: 7,
                statistics: snapshot,
                totalItems: 10_000,
                elapsed: .seconds(5),
                itemsPerSecond: 1_000,
                sendRate: 300,
                logins: 1
            )
        )
        #expect(line == "run 7: 4210/10000 (42%) · 1000 rows/s · 210 failed · 429s 3 · send rate 300/s · ETA 6s")
    }
}

@Suite("Database outage budget (pure)")
struct OutageBudgetTests {
    typealias Instant = ManualClock.Instant
    func at(_ seconds: Double) -> Instant { Instant(offset: .seconds(seconds)) }

    @Test("failures are retried until they have lasted the limit; a success ends the outage")
    func budget() {
        var budget = OutageBudget<Instant>(limit: .seconds(60))
        #expect(budget.recordFailure(startedAt: at(0), now: at(0)) == nil)
        #expect(budget.recordFailure(startedAt: at(58), now: at(59)) == nil)
        budget.recordSuccess()
        #expect(budget.failingSince == nil)
        #expect(budget.recordFailure(startedAt: at(100), now: at(100)) == nil)
        #expect(budget.recordFailure(startedAt: at(150), now: at(160)) == .seconds(60))
    }

    @Test("the outage counts from the start of the first statement that got no answer, not from its failure")
    func outageStartsWhenTheStatementStarted() {
        var budget = OutageBudget<Instant>(limit: .seconds(10))
        // A statement started at 0 waits for a connection the pool cannot open: its deadline is the end of
        // the budget, and when it fails there the limit is reached at once.
        #expect(budget.deadline(forStatementAt: at(0), minimum: .seconds(1)) == at(10))
        #expect(budget.recordFailure(startedAt: at(0), now: at(10)) == .seconds(10))
    }

    @Test("a statement started during an outage gets what is left of the budget, but at least the minimum")
    func deadlines() {
        var budget = OutageBudget<Instant>(limit: .seconds(10))
        #expect(budget.recordFailure(startedAt: at(2), now: at(3)) == nil)
        #expect(budget.failingSince == at(2))
        #expect(budget.deadline(forStatementAt: at(4), minimum: .seconds(1)) == at(12))
        #expect(budget.deadline(forStatementAt: at(11.5), minimum: .seconds(1)) == at(12.5))
        // A failure of a statement that started earlier moves the outage's start back.
        #expect(budget.recordFailure(startedAt: at(1), now: at(5)) == nil)
        #expect(budget.failingSince == at(1))
        #expect(budget.recordFailure(startedAt: at(6), now: at(11)) == .seconds(10))
    }

    @Test("a zero limit gives up on the first failure")
    func zeroLimit() {
        var budget = OutageBudget<Instant>(limit: .zero)
        #expect(budget.recordFailure(startedAt: at(5), now: at(5)) == .zero)
    }
}

@Suite("Worker configuration validation")
struct WorkerConfigurationTests {
    @Test("out-of-range settings are rejected, naming the flag")
    func validation() {
        var configuration = WorkerConfiguration()
        configuration.heartbeatInterval = .seconds(100)
        #expect(throws: WorkerError.self) { try configuration.validate() }
        do { try configuration.validate() } catch { #expect(error.description.contains("--heartbeat")) }
        configuration = WorkerConfiguration()
        configuration.claimBatch = 0
        do {
            try configuration.validate()
            Issue.record("accepted a claim batch of 0")
        } catch {
            #expect(error.code == .invalidSetting && error.description.contains("--claim-batch"))
        }
    }
}

@Suite("Database errors: which ones the worker retries")
struct DatabaseErrorTransienceTests {
    @Test(
        "lost connections, deadlocks, restarts and resource shortages are retried; rejected statements are not",
        arguments: [
            ("08006", true), ("40001", true), ("40P01", true), ("53300", true), ("57P01", true), ("55P03", true),
            ("22021", false), ("42P01", false), ("23505", false),
        ]
    )
    func transience(sqlState: String, transient: Bool) {
        #expect(DatabaseError(.queryFailed, "x", sqlState: sqlState).isTransient == transient)
    }

    @Test("a connection that cannot be made is transient; a schema that is not migrated is not")
    func codes() {
        #expect(DatabaseError(.cannotConnect, "x").isTransient)
        #expect(!DatabaseError(.schemaNotMigrated, "x").isTransient)
    }
}

@Suite("enrich run --job: flag > environment > job file > default")
struct JobSettingsLayeringTests {
    let credentials = [
        "NYMBLE_ORG_CODE": "org_1", "NYMBLE_CLIENT_ID": "client_1", "NYMBLE_CLIENT_SECRET": "s3cret-value",
    ]

    /// A job file setting concurrency 4 and lease 90; returns the resolved settings for `flags` + `environment`.
    func settings(_ flags: [String], _ environment: [String: String]) throws -> RunOptions.Settings {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Data(#"{"source": "queue", "concurrency": 4, "lease": 90, "api-url": "http://job:1"}"#.utf8)
            .write(to: directory.appendingPathComponent("nightly.json"))
        let command = try RunCommand.parse(["--job", "nightly", "--jobs-dir", directory.path] + flags)
        let (job, layered) = try command.resolveJob(Environment(credentials.merging(environment) { _, new in new }))
        #expect(job?.name == "nightly")
        return try command.options.settings(layered)
    }

    @Test("the job's values apply where nothing else is given, and its name is the run's job name")
    func jobValues() throws {
        let resolved = try settings([], [:])
        #expect(resolved.worker.concurrency == 4 && resolved.worker.lease == .seconds(90))
        #expect(resolved.client.baseURL == "http://job:1" && resolved.worker.jobName == "nightly")
        #expect(resolved.worker.shutdownGrace == .seconds(30), "defaults for the rest")
    }

    @Test("an environment variable beats the job, a flag beats both; empty variables count as unset")
    func precedence() throws {
        #expect(try settings([], ["ENRICH_CONCURRENCY": "8"]).worker.concurrency == 8)
        #expect(try settings(["--concurrency", "16"], ["ENRICH_CONCURRENCY": "8"]).worker.concurrency == 16)
        #expect(try settings([], ["ENRICH_CONCURRENCY": ""]).worker.concurrency == 4)
        #expect(try settings([], ["ENRICH_JOB_NAME": "other"]).worker.jobName == "nightly")
    }

    @Test("a NAME_FILE variable beats the job's NAME")
    func fileVariable() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("url-\(UUID().uuidString)")
        try Data("http://from-file:2\n".utf8).write(to: file)
        #expect(try settings([], ["NYMBLE_BASE_URL_FILE": file.path]).client.baseURL == "http://from-file:2")
    }

    @Test("--job-name cannot rename a job's runs")
    func noRename() throws {
        #expect(throws: ValidationError.self) { _ = try settings(["--job-name", "x"], [:]) }
    }
}
