import ArgumentParser
import EnrichQueue
import Foundation

/// `enrich status`: queue counts and recent job runs.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show queue counts by state and the recent job runs (progress, rate, ETA for a running one)."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: ArgumentHelp("Only runs of this job.", valueName: "name"))
    var job: String?

    @Option(help: ArgumentHelp("How many recent runs to list (default 10).", valueName: "n"))
    var limit: Int = 10

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must not be negative") }
    }

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let configuration = try database.configuration()
            let (counts, runs) = try await Database.withDatabase(configuration, logger: logger) { db in
                let queue = Queue(database: db)
                try await queue.compactCounts()
                return (try await queue.counts(), try await JobRuns(database: db).recent(limit: limit, jobName: job))
            }
            let report = StatusReport(schema: configuration.schema, queue: counts, runs: runs)
            if json {
                print(String(decoding: try JSONEncoder.sorted.encode(report), as: UTF8.self))
            } else {
                print(report.text())
            }
            return EnrichExitCode.success
        }
    }
}
