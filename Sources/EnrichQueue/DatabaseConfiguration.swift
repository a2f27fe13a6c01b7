import Foundation
import Logging
import NIOSSL
import PostgresNIO

/// Where the queue lives: a parsed `postgres://` URL plus the schema that holds enrich's tables.
///
/// Accepts the standard libpq URL form, `postgres://user:password@host:port/database?sslmode=require`,
/// including percent-encoded credentials, `?host=/run/postgresql` for a Unix socket, and
/// `sslmode` = `disable`, `allow`, `prefer` (the default), `require`, `verify-ca` or `verify-full`.
public struct DatabaseConfiguration: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var unixSocketPath: String?
    public var username: String
    /// Never printed: ``description`` and every error leave it out.
    public var password: String?
    public var database: String
    public var sslMode: String
    /// The schema holding enrich's tables; one schema per deployment (tests use one per suite).
    public var schema: String
    /// Upper bound of pooled connections the process opens.
    public var maximumConnections: Int
    /// How long to wait for a connection to open, in seconds.
    public var connectTimeout: Duration
    /// How long a statement (or a wait for a pooled connection) may take before it is given up and its
    /// connection closed; bulk loads pass a longer one of their own.
    public var statementTimeout: Duration
    /// Whether the claim and the write-back are prepared once per connection (``PreparedStatements``); off
    /// behind a connection pooler that cannot keep a connection's prepared statements.
    public var preparedStatements = true

    public init(
        url: String,
        schema: String = "enrich",
        maximumConnections: Int = 8,
        connectTimeout: Duration = .seconds(10),
        statementTimeout: Duration = .seconds(30)
    ) throws(DatabaseError) {
        guard let components = URLComponents(string: url),
            let scheme = components.scheme, scheme == "postgres" || scheme == "postgresql"
        else {
            throw DatabaseError(
                .invalidURL,
                "DATABASE_URL must look like postgres://user:password@host:5432/database (got a value that does not parse as one)"
            )
        }
        let query = Dictionary(
            (components.queryItems ?? []).map { ($0.name, $0.value ?? "") },
            uniquingKeysWith: { _, last in last }
        )
        self.host = components.host.flatMap { $0.isEmpty ? nil : $0 } ?? "localhost"
        self.port = components.port ?? Int(query["port"] ?? "") ?? 5432
        if let socket = query["host"], socket.hasPrefix("/") {
            self.unixSocketPath = socket.hasSuffix(".s.PGSQL.\(port)") ? socket : "\(socket)/.s.PGSQL.\(port)"
        }
        self.username = components.user.flatMap { $0.removingPercentEncoding } ?? query["user"] ?? "postgres"
        self.password = components.password.flatMap { $0.removingPercentEncoding } ?? query["password"]
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? (query["dbname"] ?? username) : (path.removingPercentEncoding ?? path)
        self.sslMode = query["sslmode"] ?? "prefer"
        guard ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"].contains(sslMode) else {
            throw DatabaseError(
                .invalidURL,
                "DATABASE_URL sslmode '\(sslMode)' is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        }
        self.schema = try SchemaName.validated(schema)
        self.maximumConnections = maximumConnections
        self.connectTimeout = connectTimeout
        self.statementTimeout = statementTimeout
    }

    /// `host:port/database` (or the socket path), for messages. Never includes the password.
    public var description: String {
        if let unixSocketPath { return "\(unixSocketPath) (database \(database), user \(username))" }
        return "\(host):\(port)/\(database) (user \(username))"
    }

    /// The PostgresNIO client configuration this URL describes.
    public func clientConfiguration() -> PostgresClient.Configuration {
        let tls = self.tls
        var configuration = either(
            socket: { PostgresClient.Configuration(unixSocketPath: $0, username: $1, password: $2, database: $3) },
            tcp: { .init(host: $0, port: $1, username: $2, password: $3, database: $4, tls: tls) }
        )
        configuration.options.maximumConnections = maximumConnections
        configuration.options.minimumConnections = 0
        configuration.options.connectTimeout = connectTimeout
        configuration.options.additionalStartupParameters = [("application_name", "enrich")]
        return configuration
    }

    /// A single-connection configuration (direct sessions: checks, locks, bulk loads).
    func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch sslMode {
        case "disable": tls = .disable
        case "allow", "prefer": tls = .prefer(try NIOSSLContext(configuration: tlsConfiguration))
        default: tls = .require(try NIOSSLContext(configuration: tlsConfiguration))
        }
        var configuration = either(
            socket: { PostgresConnection.Configuration(unixSocketPath: $0, username: $1, password: $2, database: $3) },
            tcp: { .init(host: $0, port: $1, username: $2, password: $3, database: $4, tls: tls) }
        )
        configuration.options.connectTimeout = .init(connectTimeout)
        configuration.options.additionalStartupParameters = [("application_name", "enrich")]
        return configuration
    }

    /// The socket or the TCP form of a PostgresNIO configuration, whichever this URL names.
    private func either<Configuration>(
        socket: (String, String, String?, String) -> Configuration,
        tcp: (String, Int, String, String?, String) -> Configuration
    ) -> Configuration {
        if let unixSocketPath { return socket(unixSocketPath, username, password, database) }
        return tcp(host, port, username, password, database)
    }

    private var tlsConfiguration: TLSConfiguration {
        var config = TLSConfiguration.makeClientConfiguration()
        switch sslMode {
        case "verify-full": break
        case "verify-ca": config.certificateVerification = .noHostnameVerification
        default: config.certificateVerification = .none
        }
        return config
    }

    private var tls: PostgresClient.Configuration.TLS {
        switch sslMode {
        case "disable": return .disable
        case "allow", "prefer": return .prefer(tlsConfiguration)
        default: return .require(tlsConfiguration)
        }
    }
}

/// Schema names are spliced into SQL as identifiers, so only plain lower-case identifiers are accepted.
enum SchemaName {
    static func validated(_ name: String) throws(DatabaseError) -> String {
        let allowed = name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }
        guard !name.isEmpty, name.utf8.count <= 63, allowed, let first = name.utf8.first, !(48...57).contains(first)
        else {
            throw DatabaseError(
                .invalidSchemaName,
                "schema name '\(name)' must be 1-63 characters of a-z, 0-9 and _, not starting with a digit"
            )
        }
        return name
    }
}
