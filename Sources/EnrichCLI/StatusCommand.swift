import ArgumentParser
import EnrichCore
import EnrichJobs
import EnrichQueue
import EnrichSettings
import EnrichStatus
import Foundation
import UnixSignals

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

    @Flag(help: "Refresh the table in place every few seconds (given after it; default 2) until Ctrl-C.")
    var watch = false

    @Argument(help: ArgumentHelp("With --watch: seconds between refreshes.", valueName: "seconds"))
    var seconds: Double?

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must not be negative") }
        if seconds != nil && !watch { throw ValidationError("seconds are for --watch: status --watch 5") }
        if let seconds, !(seconds >= 0.2 && seconds <= 3600) {
            throw ValidationError("--watch takes 0.2 to 3600 seconds")
        }
        if watch && (check || json) { throw ValidationError("--watch shows the table: not with --check or --json") }
    }

    func run() async throws {
        try await reportingErrors { try await check ? runCheck() : watch ? watchTable() : show() }
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

    /// `--watch`: the table redrawn in place on a terminal (clear screen, then the table); off a terminal,
    /// one table after another.
    private func watchTable() async throws -> Int32 {
        let logger = try database.makeLogger()
        let (limit, job) = (self.limit, self.job)
        let interval = Duration.seconds(seconds ?? 2)
        let terminal = isatty(STDOUT_FILENO) == 1
        try await Database.withDatabase(try database.configuration(), logger: logger) { db in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        let text = try await StatusReport.read(db, limit: limit, job: job).text()
                        let stamp = Date().formatted(.iso8601)
                        let seconds = String(format: "%g", interval.inSeconds)
                        let footer = "\(stamp) · refreshed every \(seconds) s · Ctrl-C to stop"
                        // Written whole, unbuffered: the screen is never seen half drawn.
                        let screen =
                            terminal
                            ? "\u{1B}[H\u{1B}[2J" + text + "\n\n" + footer + "\n" : text + "\n" + footer + "\n\n"
                        FileHandle.standardOutput.write(Data(screen.utf8))
                        try await Task.sleep(for: interval)
                    }
                }
                // Ctrl-C or SIGTERM ends the watch with exit 0 (trapped here: a parent may have left them ignored).
                group.addTask { for await _ in await UnixSignalsSequence(trapping: .sigint, .sigterm) { return } }
                try await group.next()
                group.cancelAll()
            }
        }
        return EnrichExitCode.success
    }

    private func show() async throws -> Int32 {
        let logger = try database.makeLogger()
        let (limit, job) = (self.limit, self.job)
        let report = try await Database.withDatabase(try database.configuration(), logger: logger) { db in
            try await StatusReport.read(db, limit: limit, job: job)
        }
        if json {
            print(String(decoding: try JSONEncoder.sorted.encode(report), as: UTF8.self))
        } else {
            print(report.text())
        }
        return EnrichExitCode.success
    }
}
