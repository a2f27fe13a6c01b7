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
            let database = Database(client: client, configuration: configuration, logger: logger)
            try await database.checkConnection()
            return try await body(database)
        }
    }

    /// Opens one direct connection and runs `SELECT 1`, so that an unreachable server or a refused login
    /// fails at once with the server's own reason (the pool would keep retrying in the background).
    func checkConnection() async throws {
        let description = configuration.description
        do {
            let connection = try await PostgresConnection.connect(
                configuration: try configuration.connectionConfiguration(),
                id: 0,
                logger: logger
            )
            do {
                try await connection.query("SELECT 1", logger: logger)
                try await connection.close()
            } catch {
                try? await connection.close()
                throw error
            }
        } catch {
            let reason: String
            if let psql = error as? PSQLError {
                if let message = psql.serverInfo?[.message] {
                    reason = message
                } else if let underlying = psql.underlying {
                    reason = String(describing: underlying)
                } else {
                    reason = "\(psql.code)"
                }
            } else {
                reason = String(describing: error)
            }
            throw DatabaseError(.cannotConnect, "cannot connect to PostgreSQL at \(description): \(reason)")
        }
    }
}
