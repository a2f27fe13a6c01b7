import Logging
import PostgresNIO

/// A running PostgreSQL connection pool bound to one enrich schema.
///
/// Create it with ``withDatabase(_:logger:_:)``: the pool runs for the scope of the closure and is shut down
/// when it returns, so no connection outlives the work that needed it.
public struct Database: Sendable {
    public let client: PostgresClient
    public let configuration: DatabaseConfiguration
    public let logger: Logger
    /// The statements prepared on the pool's connections.
    let statements: PreparedStatements

    /// The quoted schema, for splicing into SQL with `unescaped:` (validated at configuration time).
    var schema: String { "\"\(configuration.schema)\"" }

    /// Opens a pool, checks that the server answers, runs `body`, then closes the pool.
    ///
    /// - Throws: ``DatabaseError/Code/cannotConnect`` naming the host (never the password) when the
    ///   server cannot be reached or refuses the login.
    public static func withDatabase<Result: Sendable>(
        _ configuration: DatabaseConfiguration,
        logger: Logger,
        _ body: (Database) async throws -> Result
    ) async throws -> Result {
        let client = PostgresClient(configuration: configuration.clientConfiguration(), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            let database = Database(
                client: client,
                configuration: configuration,
                logger: logger,
                statements: PreparedStatements(enabled: configuration.preparedStatements)
            )
            try await database.checkConnection()
            return try await body(database)
        }
    }

    /// Opens one direct connection and runs `SELECT 1`, so that an unreachable server or a refused login
    /// fails at once with the server's own reason (the pool would keep retrying in the background).
    func checkConnection() async throws {
        try await withDirectSession("check the connection") { session in try await session.query("SELECT 1") }
    }

    /// Why the server cannot be reached right now, in plain words ("connection refused", "the database
    /// system is starting up", ...), found with one direct connection attempt of at most `timeout`; nil when
    /// it answers. For messages about an outage, where the pool only says that it has no connection.
    public func probe(timeout: Duration = .seconds(3)) async -> String? {
        var probing = configuration
        probing.connectTimeout = min(configuration.connectTimeout, timeout)
        probing.statementTimeout = timeout
        do {
            try await Database(client: client, configuration: probing, logger: logger, statements: statements)
                .checkConnection()
            return nil
        } catch let error as DatabaseError {
            return error.message
        } catch {
            return DatabaseError.plainReason(error)
        }
    }

    /// The error for a connection that could not be opened: names the server (never the password) and
    /// the cause in plain words.
    func cannotConnect(_ error: any Error) -> DatabaseError {
        if let error = error as? DatabaseError, error.code == .cannotConnect { return error }
        return DatabaseError(
            .cannotConnect,
            "cannot connect to PostgreSQL at \(configuration.description): \(DatabaseError.plainReason(error))"
        )
    }
}
