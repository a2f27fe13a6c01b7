import ArgumentParser
import EnrichQueue
import Logging

/// Options every database-using subcommand shares.
public struct DatabaseOptions: ParsableArguments, Sendable {
    @Option(
        name: .customLong("database-url"),
        help: ArgumentHelp(
            "PostgreSQL URL, postgres://user:password@host:port/db?sslmode=prefer (env DATABASE_URL or DATABASE_URL_FILE).",
            valueName: "url"
        )
    )
    public var databaseURL: String?

    @Option(
        help: ArgumentHelp("Schema holding enrich's tables (env ENRICH_SCHEMA; default enrich).", valueName: "name")
    )
    public var schema: String?

    @Option(
        name: .customLong("db-connections"),
        help: ArgumentHelp(
            "Maximum pooled database connections (env ENRICH_DB_CONNECTIONS; default 8).",
            valueName: "n"
        )
    )
    public var databaseConnections: Int?

    @Option(
        name: .customLong("log-level"),
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical (env ENRICH_LOG_LEVEL; default info).",
            valueName: "level"
        )
    )
    public var logLevel: String?

    @Option(
        name: .customLong("log-format"),
        help: ArgumentHelp(
            "text or json, written to standard error (env ENRICH_LOG_FORMAT; default text).",
            valueName: "format"
        )
    )
    public var logFormat: String?

    public init() {}

    /// The database configuration from flags, then environment, then defaults.
    public func configuration(_ environment: Environment = Environment()) throws -> DatabaseConfiguration {
        guard let url = try databaseURL ?? environment.value("DATABASE_URL") else {
            throw ConfigurationError(
                "no database: set DATABASE_URL (or DATABASE_URL_FILE) or pass --database-url postgres://user@host/db"
            )
        }
        return try DatabaseConfiguration(
            url: url,
            schema: try schema ?? environment.value("ENRICH_SCHEMA") ?? "enrich",
            maximumConnections: try databaseConnections ?? environment.parsed("ENRICH_DB_CONNECTIONS") ?? 8
        )
    }

    /// Sets up process-wide logging once and returns the root logger.
    public func makeLogger(label: String = "enrich", _ environment: Environment = Environment()) throws -> Logger {
        try LoggingSetup.makeLogger(label: label, level: logLevel, format: logFormat, environment)
    }

    public func validate() throws {
        if let databaseConnections, databaseConnections < 1 {
            throw ValidationError("--db-connections must be at least 1")
        }
    }
}
