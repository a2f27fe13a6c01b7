import ArgumentParser
import EnrichQueue

/// `enrich requeue`: gives failed rows (all, or those the filters choose) a fresh set of attempts.
struct RequeueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "requeue",
        abstract: "Put failed rows back to pending with fresh attempts: all, or those --run, --org, --reason choose.",
        discussion: "See them first with `enrich failures` and the same filters; --dry-run only counts."
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var filters: FailureFilterOptions

    @Flag(name: .customLong("dry-run"), help: "Only say how many rows would be queued again.")
    var dryRun = false

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let (filter, dryRun) = (filters.filter, self.dryRun)
            let count = try await Database.withDatabase(try database.configuration(), logger: logger) { db in
                try await Queue(database: db).requeueFailed(filter, dryRun: dryRun)
            }
            let rows = "\(count) failed row\(count == 1 ? "" : "s")\(filters.summary)"
            print(dryRun ? "would queue \(rows) again (dry run: nothing changed)" : "queued \(rows) again")
            return EnrichExitCode.success
        }
    }
}
