import EnrichQueue
import Testing

@Suite("Database URL parsing")
struct DatabaseConfigurationTests {
    @Test("parses user, percent-encoded password, host, port, database and sslmode")
    func parsesFullURL() throws {
        let configuration = try DatabaseConfiguration(
            url: "postgres://app%40x:p%40ss%2Fw@db.internal:6432/queue?sslmode=require"
        )
        #expect(configuration.username == "app@x")
        #expect(configuration.password == "p@ss/w")
        #expect(configuration.host == "db.internal" && configuration.port == 6432)
        #expect(configuration.database == "queue" && configuration.sslMode == "require")
        #expect(configuration.description == "db.internal:6432/queue (user app@x)")
        #expect(!configuration.description.contains("p@ss"))
    }

    @Test("defaults: port 5432, sslmode prefer, database named after the user")
    func defaults() throws {
        let configuration = try DatabaseConfiguration(url: "postgresql://alice@localhost")
        #expect(configuration.port == 5432 && configuration.sslMode == "prefer" && configuration.database == "alice")
    }

    @Test("a socket directory in ?host= selects a Unix socket")
    func unixSocket() throws {
        let configuration = try DatabaseConfiguration(url: "postgres://bob@/app?host=/run/postgresql")
        #expect(configuration.unixSocketPath == "/run/postgresql/.s.PGSQL.5432")
    }

    @Test(
        "rejects what is not a postgres URL, a bad sslmode and an unsafe schema name, without echoing the password",
        arguments: [
            ("mysql://u:pw@h/db", "enrich"), ("postgres://u:pw@h/db?sslmode=sometimes", "enrich"),
            ("postgres://u:pw@h/db", "Robert'); DROP"), ("postgres://u:pw@h/db", "1abc"),
        ]
    )
    func rejectsInvalid(url: String, schema: String) {
        let error = #expect(throws: DatabaseError.self) { try DatabaseConfiguration(url: url, schema: schema) }
        #expect(error?.description.contains("pw") == false)
    }
}
