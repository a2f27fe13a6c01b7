import ArgumentParser
import EnrichCore
import EnrichJobs
import EnrichQueue
import EnrichSettings
import Foundation

/// `enrich status`: queue counts and recent job runs.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show queue counts by state and the recent job runs (progress, rate, ETA for a running one).",
        discussion: """
            With --check it prints one line about the last run (of --job, or of any job) for monitoring \
            (Nagios-style checks, cron mail) and exits 7 when that run failed, was interrupted or abandoned, \
            is stuck (running with a heartbeat older than --stale-after), or started longer than --max-age \
            ago; 0 otherwise (OK: running or succeeded). Exit 4 when the database cannot be reached.
            """
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: ArgumentHelp("Only runs of this job.", valueName: "name"))
    var job: String?

    @Option(help: ArgumentHelp("How many recent runs to list (default 10).", valueName: "n"))
    var limit: Int = 10

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(help: "Check the last run: one line, exit 7 on a problem (see above).")
    var check = false

    @Option(name: .customLong(Settings.maxAge.name), help: .init(Settings.maxAge))
    var maxAge: String?

    @Option(name: .customLong(Settings.staleAfter.name), help: .init(Settings.staleAfter))
    var staleAfter: String?

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must not be negative") }
    }

    func run() async throws {
        try await reportingErrors { try await check ? runCheck() : show() }
    }

    private func runCheck() async throws -> Int32 {
        let environment = Environment()
        let flags = [Settings.maxAge.name: maxAge, Settings.staleAfter.name: staleAfter].compactMapValues { $0 }
        let sources = SettingSources(flags: flags, environment: environment)
        let maxAge = try sources.value(Settings.maxAge)
        let stale = try sources.value(Settings.staleAfter) ?? .seconds(60)
        let logger = try database.makeLogger()
        let configuration = try database.configuration(environment)
        let job = self.job
        let (latest, now, dead) = try await Database.withDatabase(configuration, logger: logger) { db in
            let jobRuns = JobRuns(database: db)
            let latest = try await jobRuns.recent(limit: 1, jobName: job).first
            let dead = try await jobRuns.deadRuns(among: latest.map { [$0.id] } ?? [])
            return (latest, try await jobRuns.now(), dead)
        }
        let health = RunHealth.judge(
            job: job,
            latest: latest,
            now: now,
            maxAge: maxAge,
            staleAfter: stale,
            isDead: latest.map { dead.contains($0.id) } ?? false
        )
        print(health.line)
        return health.isProblem ? EnrichExitCode.checkFailed : EnrichExitCode.success
    }

    private func show() async throws -> Int32 {
        let logger = try database.makeLogger()
        let configuration = try database.configuration()
        let (counts, fleet, runs, dead) = try await Database.withDatabase(configuration, logger: logger) { db in
            let queue = Queue(database: db)
            let jobRuns = JobRuns(database: db)
            try await queue.compactCounts()
            let runs = try await jobRuns.recent(limit: limit, jobName: job)
            let running = try await jobRuns.runningIDs()
            let dead = try await jobRuns.deadRuns(among: running)
            return (try await queue.counts(), try await FleetStatus.read(db, dead: dead), runs, dead)
        }
        let report = StatusReport(schema: configuration.schema, queue: counts, fleet: fleet, runs: runs, dead: dead)
        if json {
            print(String(decoding: try JSONEncoder.sorted.encode(report), as: UTF8.self))
        } else {
            print(report.text())
        }
        return EnrichExitCode.success
    }
}
