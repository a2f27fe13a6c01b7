import ArgumentParser
import EnrichCore
import EnrichQueue
import Foundation

/// `enrich failures`: the failed rows grouped by reason, to read why and choose what to requeue.
struct FailuresCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failures",
        abstract: "Show failed rows grouped by reason: counts, first and last seen, example pairs.",
        discussion: """
            Filter with --run, --org and --reason, then put exactly those rows back with \
            `enrich requeue` and the same filters (--dry-run first to see how many).
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var filters: FailureFilterOptions

    @Option(help: ArgumentHelp("Show at most this many reasons, the largest first.", valueName: "n"))
    var limit = 20

    @Flag(help: "Print the report as JSON: an object with `total` and a `groups` array (reason, count, ...).")
    var json = false

    func validate() throws {
        if limit < 1 { throw ValidationError("--limit must be at least 1") }
    }

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let (filter, limit) = (filters.filter, self.limit)
            let report = try await Database.withDatabase(try database.configuration(), logger: logger) { db in
                try await Queue(database: db).failures(filter, limit: limit)
            }
            if json {
                print(String(decoding: try JSONEncoder.sorted.encode(report), as: UTF8.self))
            } else {
                print(Self.table(report, filterSummary: filters.summary))
            }
            return EnrichExitCode.success
        }
    }

    static func table(_ report: FailureReport, filterSummary: String) -> String {
        guard report.total > 0 else { return "no failed rows\(filterSummary)" }
        let shown = report.groups.reduce(0) { $0 + $1.count }
        var lines = ["\(report.total) failed rows\(filterSummary), by reason:"]
        let time = ISO8601DateFormatter()
        for group in report.groups {
            lines.append("")
            lines.append("  \(group.count) × \(group.reason.prefix(300))")
            lines.append("    first \(time.string(from: group.firstSeen)), last \(time.string(from: group.lastSeen))")
            let examples = group.examples.map { example in
                "\(example.organizationId)/\(example.userId)" + (example.run.map { " (run \($0))" } ?? "")
            }
            lines.append("    e.g. \(examples.joined(separator: ", "))")
        }
        if shown < report.total {
            lines.append("")
            lines.append("  … \(report.total - shown) more rows under other reasons (--limit)")
        }
        return lines.joined(separator: "\n")
    }
}
