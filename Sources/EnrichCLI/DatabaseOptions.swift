import ArgumentParser
import EnrichQueue
import EnrichSettings
import Logging

/// The database and logging settings as options of the commands that use the database (`enrich run` reads
/// them with its own settings). Names and help come from their descriptions in `Settings`.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong(Settings.databaseURL.name), help: .init(Settings.databaseURL))
    var databaseURL: String?
    @Option(name: .customLong(Settings.schema.name), help: .init(Settings.schema))
    var schema: String?
    @Option(name: .customLong(Settings.databaseConnections.name), help: .init(Settings.databaseConnections))
    var databaseConnections: String?
    @Option(name: .customLong(Settings.statementTimeout.name), help: .init(Settings.statementTimeout))
    var statementTimeout: String?
    @Option(name: .customLong(Settings.preparedStatements.name), help: .init(Settings.preparedStatements))
    var preparedStatements: String?
    @Option(name: .customLong(Settings.logLevel.name), help: .init(Settings.logLevel))
    var logLevel: String?
    @Option(name: .customLong(Settings.logFormat.name), help: .init(Settings.logFormat))
    var logFormat: String?

    /// The options given, by setting name, over the process environment.
    func sources(_ environment: Environment = Environment()) -> SettingSources {
        let given: [(any AnySetting, String?)] = [
            (Settings.databaseURL, databaseURL), (Settings.schema, schema),
            (Settings.databaseConnections, databaseConnections), (Settings.statementTimeout, statementTimeout),
            (Settings.preparedStatements, preparedStatements), (Settings.logLevel, logLevel),
            (Settings.logFormat, logFormat),
        ]
        let flags = Dictionary(
            uniqueKeysWithValues: given.compactMap { setting, value in value.map { (setting.name, $0) } }
        )
        return SettingSources(flags: flags, environment: environment)
    }

    func configuration(_ environment: Environment = Environment()) throws -> DatabaseConfiguration {
        try sources(environment).databaseConfiguration()
    }

    /// Sets up process-wide logging once and returns the root logger.
    func makeLogger(label: String = "enrich") throws -> Logger {
        try LoggingSetup.makeLogger(label: label, sources: sources())
    }
}

extension ArgumentHelp {
    /// `--help` text of a setting: its help, environment variable and default.
    init(_ setting: any AnySetting) {
        self.init(
            "\(setting.help) (env \(setting.environment); default \(setting.defaultText)).",
            valueName: setting.valueName.isEmpty ? nil : setting.valueName
        )
    }
}
