import Foundation
import NIOCore
import NIOPosix
import PostgresNIO

/// An error from the PostgreSQL side of enrich: connecting, migrating or running a queue statement.
///
/// The ``description`` names the host, database and operation but never the password: it is safe to log.
public struct DatabaseError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Compare with the static members (`.cannotConnect`, ...).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidURL, cannotConnect, timedOut, queryFailed, invalidSchemaName, schemaNotMigrated, badSource,
                badTarget, preparedStatementLost
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// `DATABASE_URL` (or `--database-url`) could not be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// The server could not be reached or refused the login.
        public static let cannotConnect = Code(.cannotConnect)
        /// The server gave no answer by the deadline (a statement, or a wait for a connection).
        public static let timedOut = Code(.timedOut)
        /// A statement failed on the server.
        public static let queryFailed = Code(.queryFailed)
        /// The configured schema name is not a plain lower-case SQL identifier.
        public static let invalidSchemaName = Code(.invalidSchemaName)
        /// The schema has not been migrated yet (run `enrich migrate`).
        public static let schemaNotMigrated = Code(.schemaNotMigrated)
        /// A `--from-sql` source query is unusable (wrong columns, bad values, SQL error).
        public static let badSource = Code(.badSource)
        /// A write-back target's SQL is unusable (syntax, a missing table or column, a parameter's type).
        public static let badTarget = Code(.badTarget)
        /// A statement prepared on a connection was gone or could no longer run as prepared; the next attempt
        /// prepares it again.
        public static let preparedStatementLost = Code(.preparedStatementLost)

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
    /// insufficient resources 53, operator intervention such as a restart 57P, lock not available 55P03), and a
    /// prepared statement that went away (prepared again on the next attempt).
    /// A statement the server rejects for its content (bad data, missing table) fails the same way again.
    public var isTransient: Bool {
        if code == .cannotConnect || code == .timedOut || code == .preparedStatementLost { return true }
        guard let sqlState else { return code == .queryFailed }
        return sqlState.hasPrefix("08") || sqlState.hasPrefix("40") || sqlState.hasPrefix("53")
            || sqlState.hasPrefix("57P") || sqlState == "55P03"
    }

    /// Wraps a PostgresNIO error with the operation it interrupted, keeping only secret-free parts:
    /// the server's message, SQLSTATE and detail (never the bound values or connection password).
    /// Errors that are already worded for users (``DatabaseError``, ``InputError``, cancellation) pass as
    /// they are.
    static func wrap(_ error: any Error, during operation: String) -> any Error {
        let error = unwrapTransactionError(error)
        if error is DatabaseError || error is InputError || error is CancellationError { return error }
        return wrapped(error, during: operation)
    }

    /// Wraps only the driver's own errors (PostgresNIO, NIO); anything else, such as an error thrown by the
    /// caller's code inside a session, passes unchanged.
    static func wrapDriverError(_ error: any Error, during operation: String) -> any Error {
        let error = unwrapTransactionError(error)
        guard
            error is PSQLError || error is PostgresError || error is PostgresDecodingError
                || error is NIOConnectionError
                || error is IOError || error is ChannelError
        else { return error }
        return wrapped(error, during: operation)
    }

    /// ``wrap(_:during:)`` for callers that need a ``DatabaseError`` whatever the error was.
    static func wrapped(_ error: any Error, during operation: String) -> DatabaseError {
        let error = unwrapTransactionError(error)
        if let error = error as? DatabaseError { return error }
        if let psql = error as? PSQLError {
            if let info = psql.serverInfo, let message = info[.message] {
                return serverError(message, state: info[.sqlState], detail: info[.detail], during: operation)
            }
            if psql.code == .connectionError || psql.code == .unexpectedBackendMessage
                || psql.code == .serverClosedConnection || psql.code == .clientClosedConnection
                || psql.code == .poolClosed
            {
                return DatabaseError(
                    .cannotConnect,
                    "\(operation) failed: lost the database connection (\(plainReason(error)))"
                )
            }
            return DatabaseError(.queryFailed, "\(operation) failed: \(psql.code)")
        }
        if let legacy = error as? PostgresError {
            return wrapped(legacy, during: operation)
        }
        if error is NIOConnectionError || error is IOError || error is ChannelError {
            return DatabaseError(.cannotConnect, "\(operation) failed: \(plainReason(error))")
        }
        return DatabaseError(.queryFailed, "\(operation) failed: \(type(of: error))")
    }

    /// An error the server answered with: its message, SQLSTATE and detail (never the bound values); a
    /// missing table or schema means the schema is not migrated.
    private static func serverError(
        _ message: String,
        state: String?,
        detail: String?,
        during operation: String
    ) -> DatabaseError {
        var text = "\(operation) failed: \(message)"
        if let state { text += " (SQLSTATE \(state))" }
        if let detail { text += ": \(detail)" }
        if state == "42P01" || state == "3F000" { return DatabaseError(.schemaNotMigrated, text) }
        return DatabaseError(.queryFailed, text, sqlState: state)
    }

    /// PostgresNIO's older error type, which its prepared statements (``PreparedStatements``) throw: worded
    /// the same way as the newer one, with the same secret-free parts.
    private static func wrapped(_ error: PostgresError, during operation: String) -> DatabaseError {
        switch error {
        case .server(let info):
            return serverError(
                info.fields[.message] ?? "the server reported an error",
                state: info.fields[.sqlState],
                detail: info.fields[.detail],
                during: operation
            )
        case .connectionClosed:
            return DatabaseError(.cannotConnect, "\(operation) failed: lost the database connection (closed)")
        case .protocol:
            // Its text can quote the message that did not parse, row data included: not repeated here.
            return DatabaseError(.cannotConnect, "\(operation) failed: lost the database connection (protocol error)")
        }
    }

    /// Why a connection failed, in plain words: the server's own message, "connection refused", "host not
    /// found", "timed out"... Never contains the password (PostgresNIO's errors do not carry it).
    public static func plainReason(_ error: any Error) -> String {
        switch error {
        case let error as DatabaseError:
            return error.message
        case let psql as PSQLError:
            if let message = psql.serverInfo?[.message] { return message }
            if let underlying = psql.underlying { return plainReason(underlying) }
            switch psql.code {
            case .serverClosedConnection: return "the server closed the connection"
            case .clientClosedConnection: return "the connection was closed"
            default: return "\(psql.code)"
            }
        case let connection as NIOConnectionError:
            if connection.dnsAError != nil || connection.dnsAAAAError != nil {
                return "host \(connection.host) not found"
            }
            return connection.connectionErrors.first.map { plainReason($0.error) } ?? "could not connect"
        case let io as IOError:
            switch io.errnoCode {
            case ECONNREFUSED: return "connection refused"
            case ETIMEDOUT: return "timed out"
            case EHOSTUNREACH: return "host unreachable"
            case ENETUNREACH: return "network unreachable"
            case ECONNRESET: return "connection reset"
            default: return String(cString: strerror(io.errnoCode)).lowercased()
            }
        case let channel as ChannelError:
            if case .connectTimeout = channel { return "no answer within the connect timeout" }
            return "\(channel)"
        default:
            return String(describing: error)
        }
    }
}

/// `withTransaction` wraps what went wrong in a `PostgresTransactionError`; callers want the cause.
func unwrapTransactionError(_ error: any Error) -> any Error {
    guard let transaction = error as? PostgresTransactionError else { return error }
    return transaction.closureError ?? transaction.beginError ?? transaction.commitError ?? error
}
