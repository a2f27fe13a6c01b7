import EnrichJobs
import EnrichQueue
import Foundation
import PostgresNIO
import Testing

@Suite("Enqueue from CSV and SQL", .freshSchema, .timeLimit(.minutes(2)))
struct EnqueueSourceTests {
    func csv(_ text: String) -> PairCSVReader { PairCSVReader(name: "pairs.csv", data: Data(text.utf8)) }

    @Test(
        "a bad CSV is rejected with its file and line, and nothing is inserted",
        arguments: [
            ("OrgId,UserId\no1,u1\n", 1, "header"),
            ("OrganizationId,UserId\no1,u1\no2\n", 3, "UserId"),
            ("OrganizationId,UserId\no1,u1\no2,   \n", 3, "UserId"),
            ("OrganizationId,UserId\no1,u1\n,u2\n", 3, "OrganizationId"),
            ("OrganizationId,UserId\no1,u1\no2,\(String(repeating: "x", count: 257))\n", 3, "UserId"),
            ("OrganizationId,UserId\no1,u1\no2,u2,extra\n", 3, nil),
        ] as [(String, Int, String?)]
    )
    func badCSVInsertsNothing(input: String, line: Int, field: String?) async throws {
        let queue = Queue(database: try TestDatabase.require())
        let reader = csv(input)
        let error = await #expect(throws: InputError.self) {
            try await queue.enqueue { try reader.nextChunk(size: 1) }
        }
        #expect(error?.file == "pairs.csv")
        #expect(error?.line == line)
        #expect(error?.field == field)
        #expect(try await queue.exactCounts().total == 0)
    }

    @Test("bad UTF-8 deep in a large file rolls back every chunk already inserted")
    func badUTF8RollsBackEverything() async throws {
        let queue = Queue(database: try TestDatabase.require())
        var data = Data("OrganizationId,UserId\n".utf8)
        for index in 0..<25_000 { data.append(contentsOf: Array("org\(index % 3),user\(index)\n".utf8)) }
        data.append(contentsOf: [0x6F, 0x2C, 0xC3, 0x28, 0x0A])
        let reader = PairCSVReader(name: "big.csv", data: data)
        let error = await #expect(throws: InputError.self) { try await queue.enqueue { try reader.nextChunk() } }
        #expect(error?.line == 25_002)
        #expect(error?.problem.contains("UTF-8") == true)
        #expect(try await queue.exactCounts().total == 0)
    }

    @Test("a large CSV loads in chunks with duplicates counted once")
    func largeCSVLoads() async throws {
        let queue = Queue(database: try TestDatabase.require())
        var text = "\u{FEFF}OrganizationId,UserId\r\n"
        for index in 0..<30_000 { text += "\"org\(index % 5)\",user\(index)\r\n" }
        text += "org0,user0\r\n\r\n"
        let reader = csv(text)
        let summary = try await queue.enqueue { try reader.nextChunk() }
        #expect(summary == EnqueueSummary(read: 30_001, inserted: 30_000, requeued: 0, alreadyQueued: 1))
        #expect(try await queue.counts().pending == 30_000)
    }

    @Test("--from-sql enqueues the rows of a query over the user's own tables")
    func fromSQLEnqueues() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        let schema = "\"\(database.configuration.schema)\""
        try await database.client.query(
            "CREATE TABLE \(unescaped: schema).accounts (org text, member text, active bool)"
        )
        try await database.client.query(
            """
            INSERT INTO \(unescaped: schema).accounts
            SELECT 'org' || (g % 4), 'member' || g, g % 2 = 0 FROM generate_series(1, 1000) AS g
            """
        )
        let summary = try await queue.enqueue(
            fromSQL: "SELECT org, member FROM \(schema).accounts WHERE active;",
            maxAttempts: 3
        )
        #expect(summary == EnqueueSummary(read: 500, inserted: 500, requeued: 0, alreadyQueued: 0))
        let again = try await queue.enqueue(fromSQL: "SELECT org, member FROM \(schema).accounts WHERE active")
        #expect(again.alreadyQueued == 500)
    }

    @Test(
        "--from-sql with wrong columns, bad ids or invalid SQL is rejected and nothing is inserted",
        arguments: [
            ("SELECT 'o', 'u', 'extra'", "3 columns"),
            ("SELECT 'o' UNION ALL SELECT 'p'", "returns 1 column;"),
            ("SELECT x, y FROM (VALUES ('o1', 'u1'), ('o2', ' ')) AS v(x, y)", "row 2: UserId is empty"),
            ("SELECT x, y FROM (VALUES ('o1', 'u1'), (NULL, 'u2')) AS v(x, y)", "row 2: OrganizationId is null"),
            ("SELEKT nonsense", "syntax error"),
            ("", "empty"),
        ]
    )
    func badSQLSourceInsertsNothing(sql: String, expected: String) async throws {
        let queue = Queue(database: try TestDatabase.require())
        let error = await #expect(throws: DatabaseError.self) { try await queue.enqueue(fromSQL: sql) }
        #expect(error?.code == .badSource)
        #expect(error?.description.contains(expected) == true, "\(String(describing: error))")
        #expect(try await queue.exactCounts().total == 0)
    }
}
