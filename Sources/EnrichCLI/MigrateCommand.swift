import ArgumentParser
import EnrichQueue

/// `enrich migrate`: creates or upgrades the schema.
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Create or upgrade enrich's tables (idempotent; safe to run concurrently)."
    )

    @OptionGroup var database: DatabaseOptions

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let configuration = try database.configuration()
            let applied = try await Database.withDatabase(configuration, logger: logger) { db in
                try await Migrator(database: db).migrate()
            }
            if applied.isEmpty {
                print("schema \(configuration.schema) is up to date (version \(Migrator.knownVersions.last ?? 0))")
            } else {
                print(
                    "schema \(configuration.schema): applied migrations \(applied.map(String.init).joined(separator: ", "))"
                )
            }
            return EnrichExitCode.success
        }
    }
}
