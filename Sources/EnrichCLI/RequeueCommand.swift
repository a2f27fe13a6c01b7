import ArgumentParser
import EnrichQueue

/// `enrich requeue`: gives failed rows a fresh set of attempts.
struct RequeueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "requeue",
        abstract: "Put every failed row back to pending with fresh attempts."
    )

    @OptionGroup var database: DatabaseOptions

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let count = try await Database.withDatabase(try database.configuration(), logger: logger) { db in
                try await Queue(database: db).requeueFailed()
            }
            print("queued \(count) failed rows again")
            return EnrichExitCode.success
        }
    }
}
