import EnrichQueue
import Foundation
import Logging
import PostgresNIO
import Testing

/// The PostgreSQL every integration test runs against, and a fresh migrated schema per test.
enum TestDatabase {
    /// `ENRICH_TEST_DATABASE_URL`, else `DATABASE_URL`. There is no fallback and no skipping: without a
    /// database the tests fail with instructions.
    static func url() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        guard let url = environment["ENRICH_TEST_DATABASE_URL"] ?? environment["DATABASE_URL"], !url.isEmpty else {
            throw MissingDatabase()
        }
        return url
    }

    struct MissingDatabase: Error, CustomStringConvertible {
        var description: String {
            "integration tests need PostgreSQL: run `scripts/test` (it starts a throwaway cluster, installing "
                + "PostgreSQL with apt when missing), or set DATABASE_URL=postgres://user@host:port/db"
        }
    }

    static let logger: Logger = {
        var logger = Logger(label: "enrich.tests")
        logger.logLevel = .warning
        return logger
    }()

    @TaskLocal static var current: Database?

    /// A random schema name so that tests run in parallel without seeing each other's rows.
    static func uniqueSchemaName() -> String {
        "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16)
    }

    /// Runs `body` with a freshly migrated schema that is dropped afterwards.
    static func withFreshSchema<T: Sendable>(
        maximumConnections: Int = 8,
        _ body: (Database) async throws -> T
    ) async throws -> T {
        let configuration = try DatabaseConfiguration(
            url: try url(),
            schema: uniqueSchemaName(),
            maximumConnections: maximumConnections
        )
        return try await Database.withDatabase(configuration, logger: logger) { database in
            try await Migrator(database: database).migrate()
            do {
                let result = try await body(database)
                try await drop(database)
                return result
            } catch {
                try? await drop(database)
                throw error
            }
        }
    }

    /// Drops the test's schema. Right after a test cancels its tasks, their statements' connections are being
    /// closed (a cancelled statement closes its connection; the server finishes the statement first), and the
    /// drop may meet one of them: a connection closing under it, or a deadlock with a statement still ending. So
    /// it is tried three times; a last failure is thrown with the server's message, not PSQLError's generic one.
    static func drop(_ database: Database) async throws {
        var attempt = 1
        while true {
            do {
                try await database.client.query(
                    "DROP SCHEMA IF EXISTS \(unescaped: "\"" + database.configuration.schema + "\"") CASCADE",
                    logger: logger
                )
                return
            } catch let error as PSQLError where attempt < 3 {
                logger.warning(
                    "dropping the test schema failed; trying again",
                    metadata: ["error": "\(String(reflecting: error))"]
                )
                attempt += 1
                try await Task.sleep(for: .milliseconds(200 * attempt))
            } catch let error as PSQLError {
                throw DropFailed(schema: database.configuration.schema, reason: String(reflecting: error))
            }
        }
    }

    struct DropFailed: Error, CustomStringConvertible {
        var schema: String
        var reason: String
        var description: String { "could not drop the test schema \(schema): \(reason)" }
    }

    /// Waits until the server has been up for `uptime`: a run's missing liveness lock counts as a death only
    /// then (``JobRuns/restartGrace``), and the throwaway cluster may have started moments ago.
    static func waitUntilServerUp(for uptime: Duration) async throws {
        let database = try require()
        let rows = try await database.client.query(
            "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())::float8",
            logger: logger
        ).collect()
        let seconds = try rows.first?.decode(Double.self) ?? 0
        let missing = uptime - .seconds(seconds)
        if missing > .zero { try await Task.sleep(for: missing + .milliseconds(200)) }
    }

    /// The database of the running test (set by ``FreshSchemaTrait``).
    static func require(sourceLocation: SourceLocation = #_sourceLocation) throws -> Database {
        try #require(current, "the test must be marked .freshSchema", sourceLocation: sourceLocation)
    }
}

/// Gives each test (or each test of a suite) its own freshly migrated schema in ``TestDatabase/current``.
struct FreshSchemaTrait: SuiteTrait, TestTrait, TestScoping {
    var isRecursive: Bool { true }

    func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil || !test.isSuite else { return try await function() }
        try await TestDatabase.withFreshSchema { database in
            try await TestDatabase.$current.withValue(database) { try await function() }
        }
    }
}

extension Trait where Self == FreshSchemaTrait {
    /// Runs each test in a freshly migrated schema of its own (see ``TestDatabase``).
    static var freshSchema: Self { FreshSchemaTrait() }
}
