import ArgumentParser

/// The `enrich` command: enriches (OrganizationId, UserId) pairs queued in PostgreSQL through the Nymble API.
public struct EnrichCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "enrich",
        abstract: "Enrich (OrganizationId, UserId) pairs queued in PostgreSQL with their Nymble commerce context.",
        discussion: """
            Typical use: enrich migrate; enrich enqueue pairs.csv; enrich run; enrich status.
            Every option can also be set through the environment variable named in its help; `enrich settings` \
            lists them all.

            \(EnrichExitCode.helpText)
            """,
        subcommands: [
            MigrateCommand.self, EnqueueCommand.self, RunCommand.self, StatusCommand.self, FailuresCommand.self,
            RequeueCommand.self, DashboardCommand.self,
            SimulateCommand.self, DatabaseCeilingCommand.self, SettingsCommand.self,
        ]
    )

    public init() {}
}
