import PostgresNIO

/// An error from the PostgreSQL side of enrich: connecting, migrating or running a queue statement.
///
/// The ``description`` names the host, database and operation but never the password: it is safe to log.
public struct DatabaseError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Compare with the static members (`.cannotConnect`, ...).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidURL, cannotConnect, queryFailed, invalidSchemaName, schemaNotMigrated, badSource
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// `DATABASE_URL` (or `--database-url`) could not be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// The server could not be reached or refused the login.
        public static let cannotConnect = Code(.cannotConnect)
        /// A statement failed on the server.
        public static let queryFailed = Code(.queryFailed)
        /// The configured schema name is not a plain lower-case SQL identifier.
        public static let invalidSchemaName = Code(.invalidSchemaName)
        /// The schema has not been migrated yet (run `enrich migrate`).
        public static let schemaNotMigrated = Code(.schemaNotMigrated)
        /// A `--from-sql` source query is unusable (wrong columns, bad values, SQL error).
        public static let badSource = Code(.badSource)

        public var description: String { base.rawValue }
    }

    public let code: Code
    /// A human-readable explanation, free of secrets.
    public let message: String
    /// The server's SQLSTATE, when the server answered with an error.
    public let sqlState: String?

    public init(_ code: Code, _ message: String, sqlState: String? = nil) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
    }

    public var description: String { message }

    /// Whether retrying the same statement later can succeed: a lost or refused connection, or a server
    /// error of the transient kinds (connection exception 08, serialization failure or deadlock 40,
    /// insufficient resources 53, operator intervention such as a restart 57P, lock not available 55P03).
    /// A statement the server rejects for its content (bad data, missing table) fails the same way again.
    public var isTransient: Bool {
        if code == .cannotConnect { return true }
        guard let sqlState else { return code == .queryFailed }
        return sqlState.hasPrefix("08") || sqlState.hasPrefix("40") || sqlState.hasPrefix("53")
            || sqlState.hasPrefix("57P") || sqlState == "55P03"
    }

    /// Wraps a PostgresNIO error with the operation it interrupted, keeping only secret-free parts:
    /// the server's message, SQLSTATE and detail (never the bound values or connection password).
    static func wrap(_ error: any Error, during operation: String) -> DatabaseError {
        let error = unwrapTransactionError(error)
        if let error = error as? DatabaseError { return error }
        if let psql = error as? PSQLError {
            if let info = psql.serverInfo, let message = info[.message] {
                var text = "\(operation) failed: \(message)"
                if let state = info[.sqlState] { text += " (SQLSTATE \(state))" }
                if let detail = info[.detail] { text += ": \(detail)" }
                if info[.sqlState] == "42P01" || info[.sqlState] == "3F000" {
                    return DatabaseError(.schemaNotMigrated, text + ". Run `enrich migrate` first.")
                }
                return DatabaseError(.queryFailed, text, sqlState: info[.sqlState])
            }
            if psql.code == .connectionError || psql.code == .unexpectedBackendMessage
                || psql.code == .serverClosedConnection
            {
                let cause = psql.underlying.map { String(describing: $0) } ?? "\(psql.code)"
                return DatabaseError(.cannotConnect, "\(operation) failed: lost the database connection (\(cause))")
            }
            return DatabaseError(.queryFailed, "\(operation) failed: \(psql.code)")
        }
        return DatabaseError(.queryFailed, "\(operation) failed: \(type(of: error))")
    }
}

/// `withTransaction` wraps what went wrong in a `PostgresTransactionError`; callers want the cause.
func unwrapTransactionError(_ error: any Error) -> any Error {
    guard let transaction = error as? PostgresTransactionError else { return error }
    return transaction.closureError ?? transaction.beginError ?? transaction.commitError ?? error
}
