import Logging
import PostgresNIO

/// One versioned schema change: an ordered list of SQL statements applied in one transaction.
struct Migration: Sendable {
    let version: Int
    let name: String
    /// `{schema}` is replaced by the quoted schema name.
    let statements: [String]
}

/// Applies enrich's migrations in order, each in its own transaction, under an advisory lock so that
/// concurrent `enrich migrate` invocations are safe; already-applied versions are skipped.
public struct Migrator: Sendable {
    let database: Database

    public init(database: Database) { self.database = database }

    /// The versions this build knows, in order.
    public static var knownVersions: [Int] { Migrations.all.map(\.version) }

    /// Applies every migration not yet recorded and returns the versions applied by this call.
    @discardableResult
    public func migrate() async throws -> [Int] {
        // A migration may rewrite a big table: its statements get the bulk timeout.
        try await database.withDirectSession("migrate", statementTimeout: Queue.bulkStatementTimeout) { session in
            var applied: [Int] = []
            for migration in Migrations.all {
                do {
                    if try await session.transaction({ try await apply(migration, on: $0) }) {
                        applied.append(migration.version)
                    }
                } catch {
                    throw DatabaseError.wrap(error, during: "migration \(migration.version) (\(migration.name))")
                }
            }
            return applied
        }
    }

    /// The versions recorded in the schema's migrations table (empty when the schema does not exist).
    public func appliedVersions() async throws -> [Int] {
        let schemaName = database.configuration.schema
        let exists =
            try await database.query(
                "read the applied migrations",
                "SELECT to_regclass(\(schemaName + ".schema_migrations")) IS NOT NULL"
            ).first?.decode(Bool.self) ?? false
        guard exists else { return [] }
        let rows = try await database.query(
            "read the applied migrations",
            "SELECT version FROM \(unescaped: database.schema).schema_migrations ORDER BY version"
        )
        return try rows.map { try $0.decode(Int.self) }
    }

    private func apply(_ migration: Migration, on connection: DatabaseSession) async throws -> Bool {
        let logger = database.logger
        let schema = database.schema
        // Serialises concurrent migrators on this schema; released at commit or rollback.
        let lockKey = "enrich.migrate." + database.configuration.schema
        try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(lockKey)))")
        try await connection.query("CREATE SCHEMA IF NOT EXISTS \(unescaped: schema)")
        try await connection.query(
            """
            CREATE TABLE IF NOT EXISTS \(unescaped: schema).schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        let existing = try await connection.query(
            "SELECT 1 FROM \(unescaped: schema).schema_migrations WHERE version = \(migration.version)"
        )
        guard existing.isEmpty else { return false }
        for statement in migration.statements {
            let sql = statement.replacingOccurrences(of: "{schema}", with: schema)
            try await connection.query(PostgresQuery(unsafeSQL: sql))
        }
        try await connection.query(
            "INSERT INTO \(unescaped: schema).schema_migrations (version, name) VALUES (\(migration.version), \(migration.name))"
        )
        logger.info("applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
        return true
    }
}
