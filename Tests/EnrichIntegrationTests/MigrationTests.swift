import EnrichQueue
import Foundation
import PostgresNIO
import Testing

@Suite("Migrations", .timeLimit(.minutes(2)))
struct MigrationTests {
    @Test("running migrate again is a no-op")
    func migrateIsIdempotent() async throws {
        try await TestDatabase.withFreshSchema { database in
            let migrator = Migrator(database: database)
            let before = try await migrator.appliedVersions()
            let appliedAgain = try await migrator.migrate()
            let after = try await migrator.appliedVersions()
            #expect(before == Migrator.knownVersions)
            #expect(appliedAgain == [])
            #expect(after == before)
        }
    }

    @Test("concurrent migrate calls on an empty schema all succeed and apply each version once")
    func concurrentMigrationsAreSafe() async throws {
        let configuration = try DatabaseConfiguration(
            url: try TestDatabase.url(),
            schema: TestDatabase.uniqueSchemaName()
        )
        try await Database.withDatabase(configuration, logger: TestDatabase.logger) { database in
            let applied = try await withThrowingTaskGroup(of: [Int].self) { group in
                for _ in 0..<6 { group.addTask { try await Migrator(database: database).migrate() } }
                return try await group.reduce(into: [Int]()) { $0 += $1 }
            }
            #expect(applied.sorted() == Migrator.knownVersions, "each version applied by exactly one caller")
            #expect(try await Migrator(database: database).appliedVersions() == Migrator.knownVersions)
            try await TestDatabase.drop(database)
        }
    }

    @Test("using the queue before migrating is a typed schema-not-migrated error naming the missing table")
    func unmigratedSchemaIsExplained() async throws {
        let configuration = try DatabaseConfiguration(
            url: try TestDatabase.url(),
            schema: TestDatabase.uniqueSchemaName()
        )
        try await Database.withDatabase(configuration, logger: TestDatabase.logger) { database in
            let error = await #expect(throws: DatabaseError.self) { try await Queue(database: database).counts() }
            #expect(error?.code == .schemaNotMigrated)
            #expect(error?.description.contains("queue_summary") == true, "\(error?.description ?? "")")
        }
    }
}

@Suite("Connecting", .timeLimit(.minutes(1)))
struct ConnectionTests {
    @Test("an unreachable server fails with the host named and the password left out")
    func unreachableServerNamesHostNotPassword() async throws {
        let configuration = try DatabaseConfiguration(
            url: "postgres://enrich:S3cretPassw0rd@127.0.0.1:1/queue",
            connectTimeout: .seconds(2)
        )
        let error = await #expect(throws: DatabaseError.self) {
            try await Database.withDatabase(configuration, logger: TestDatabase.logger) { _ in }
        }
        #expect(error?.code == .cannotConnect)
        let text = error?.description ?? ""
        #expect(text.contains("127.0.0.1:1/queue"))
        #expect(!text.contains("S3cretPassw0rd"))
    }

    @Test("a wrong password is reported by the server's message, without the password")
    func wrongDatabaseIsReported() async throws {
        var url = try TestDatabase.url()
        // Point at a database that does not exist on the test server.
        if let range = url.range(of: #"/[^/?]*(\?|$)"#, options: .regularExpression) {
            let suffix = url[range].hasSuffix("?") ? "?" : ""
            url.replaceSubrange(range, with: "/no_such_database_x\(suffix)")
        }
        let configuration = try DatabaseConfiguration(url: url)
        let error = await #expect(throws: DatabaseError.self) {
            try await Database.withDatabase(configuration, logger: TestDatabase.logger) { _ in }
        }
        #expect(error?.code == .cannotConnect)
        #expect(error?.description.contains("no_such_database_x") == true)
    }
}
