import EnrichCore
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import EnrichQueue

@Suite("Queue on a real PostgreSQL", .freshSchema, .timeLimit(.minutes(3)))
struct QueueTests {
    static func pairs(_ count: Int, prefix: String = "org") -> [Pair] {
        (0..<count).map { Pair(organizationId: "\(prefix)\($0 % 7)", userId: "user\($0)") }
    }

    func enqueue(_ queue: Queue, _ pairs: [Pair], maxAttempts: Int32 = 5) async throws -> EnqueueSummary {
        let chunks = stride(from: 0, to: pairs.count, by: 1000).map { Array(pairs[$0..<min($0 + 1000, pairs.count)]) }
        let box = ChunkBox(chunks)
        return try await queue.enqueue(maxAttempts: maxAttempts) { box.next() }
    }

    @Test("enqueuing a pair that is pending or running again does not duplicate it; done pairs are queued again")
    func enqueueIsIdempotent() async throws {
        let queue = Queue(database: try TestDatabase.require())
        let first = try await enqueue(queue, Self.pairs(100))
        #expect(first == EnqueueSummary(read: 100, inserted: 100, requeued: 0, alreadyQueued: 0))

        let again = try await enqueue(queue, Self.pairs(100) + Self.pairs(10))
        #expect(again == EnqueueSummary(read: 110, inserted: 0, requeued: 0, alreadyQueued: 110))

        let claimed = try await queue.claim(owner: "w1", limit: 10, lease: .seconds(60)).items
        #expect(claimed.count == 10)
        let whileRunning = try await enqueue(queue, claimed.map(\.pair))
        #expect(whileRunning.alreadyQueued == 10)

        let done = claimed.map {
            Completion(item: $0, context: CommerceContext(customerNumber: "c", priceTier: nil, currencyCode: "USD"))
        }
        #expect(try await queue.complete(done, owner: "w1").written == 10)
        let resync = try await enqueue(queue, claimed.map(\.pair))
        #expect(resync == EnqueueSummary(read: 10, inserted: 0, requeued: 10, alreadyQueued: 0))
        #expect(try await queue.exactCounts() == QueueCounts(pending: 100))
    }

    /// PostgreSQL's plan for `query`, as text.
    static func plan(_ query: PostgresQuery, in database: Database) async throws -> String {
        let explain = PostgresQuery(unsafeSQL: "EXPLAIN " + query.sql, binds: query.binds)
        return try await database.query("explain", explain).map { try $0.decode(String.self) }.joined(separator: "\n")
    }

    @Test("a queue filled without planner statistics is analyzed once, then left to autovacuum")
    func staleStatisticsAreRefreshed() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        _ = try await enqueue(queue, Self.pairs(3_000))
        let schema = "\"" + database.configuration.schema + "\""
        let analyzed: PostgresQuery = """
            SELECT count(*) FROM pg_stats WHERE schemaname = \(database.configuration.schema)
                AND tablename = 'queue_items' AND attname = 'available_at'
            """
        #expect(try await database.query("stats", analyzed).first?.decode(Int64.self) == 0, "no statistics yet")
        #expect(try await queue.refreshStatisticsIfStale(), "missing statistics are refreshed")
        #expect(try await database.query("stats", analyzed).first?.decode(Int64.self) == 1)
        // With them the claim walks the claim index and stops after the batch (no scan and sort of the queue).
        let plan = try await Self.plan(
            """
            SELECT id FROM \(unescaped: schema).queue_items WHERE state = 'pending' AND available_at <= now()
            ORDER BY available_at, id LIMIT 500 FOR UPDATE SKIP LOCKED
            """,
            in: database
        )
        #expect(plan.contains("Index Scan using queue_items_claim_idx") && !plan.contains("Sort"), "\(plan)")
    }

    @Test("writing a batch back never plans a table scan per row, whatever the statistics say about leases")
    func writeBackPlanIgnoresLeaseStatistics() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        _ = try await enqueue(queue, Self.pairs(15_000))
        let schema = "\"" + database.configuration.schema + "\""
        let claimed = try await queue.claim(owner: "w1", limit: 500, lease: .seconds(60)).items
        let batch = WriteBackBatch(
            completions: claimed.map {
                Completion(item: $0, context: CommerceContext(customerNumber: "c", priceTier: nil, currencyCode: "EUR"))
            }
        )
        let query = queue.statements.writeBack.unnamed(try Queue.writeBackBinds(batch, owner: "w1"))
        // The plan for this batch's values (the first executions on a connection), and the generic one
        // PostgreSQL may keep after them.
        func plan() async throws -> String {
            try await Self.plan(query, in: database) + "\n"
                + PreparedStatementTests.genericPlan(queue.statements.writeBack, parameters: 18, in: database)
        }
        // 15,000 rows: on a smaller table the planner scans it once whatever it expects. This run's ANALYZE
        // (migration 7: no statistics for the lease columns), then statistics of an older install taken while
        // no row was leased: neither may turn the join by id into a filter per row.
        try await queue.refreshStatisticsIfStale()
        let fresh = try await plan()
        #expect(!fresh.contains("Join Filter: ((item.id = d.id)"), "\(fresh)")
        try await database.query(
            "old statistics",
            "ALTER TABLE \(unescaped: schema).queue_items ALTER COLUMN lease_owner SET STATISTICS -1"
        )
        try await database.query(
            "pending only",
            "UPDATE \(unescaped: schema).queue_items SET lease_owner = NULL, lease_expires_at = NULL, state = 'pending'"
        )
        try await database.query("analyze", "ANALYZE \(unescaped: schema).queue_items")
        let old = try await plan()
        #expect(!old.contains("Join Filter: ((item.id = d.id)"), "\(old)")
    }

    @Test("two concurrent claimers never receive the same row, over many rounds")
    func concurrentClaimersNeverShareARow() async throws {
        let queue = Queue(database: try TestDatabase.require())
        for round in 0..<5 {
            _ = try await enqueue(queue, Self.pairs(600, prefix: "round\(round)-"))
            let claims = try await withThrowingTaskGroup(of: [Int64].self) { group in
                for worker in 0..<6 {
                    group.addTask {
                        var mine: [Int64] = []
                        while true {
                            let batch = try await queue.claim(owner: "w\(worker)", limit: 17, lease: .seconds(60)).items
                            if batch.isEmpty { return mine }
                            mine += batch.map(\.id)
                        }
                    }
                }
                return try await group.reduce(into: [[Int64]]()) { $0.append($1) }
            }
            let all = claims.flatMap { $0 }
            #expect(all.count == 600, "round \(round): every row claimed exactly once")
            #expect(Set(all).count == all.count, "round \(round): no row handed to two claimers")
            #expect(claims.filter { !$0.isEmpty }.count > 1, "round \(round): claimers really ran concurrently")
            #expect(try await queue.exactCounts().running == Int64(600 * (round + 1)))
        }
    }

    @Test("a row whose lease expired is reclaimed, and its stale owner can neither complete nor fail it")
    func expiredLeaseIsReclaimedAndStaleOwnerIsFenced() async throws {
        let queue = Queue(database: try TestDatabase.require())
        _ = try await enqueue(queue, Self.pairs(5))
        let stale = try await queue.claim(owner: "crashed", limit: 5, lease: .milliseconds(1)).items
        #expect(stale.count == 5)
        try await Task.sleep(for: .milliseconds(20))
        let reclaimed = try await queue.claim(owner: "rescuer", limit: 10, lease: .seconds(60)).items
        #expect(reclaimed.map(\.id) == stale.map(\.id))
        // A takeover is a new claim (the fence moves on) but not an attempt: no call's outcome was written.
        #expect(reclaimed.allSatisfy { $0.attempt == 1 && $0.claim == 2 })

        let context = CommerceContext(customerNumber: "STALE", priceTier: "STALE", currencyCode: "XXX")
        let staleWrite = try await queue.complete(
            stale.map { Completion(item: $0, context: context) },
            owner: "crashed"
        )
        #expect(staleWrite.written == 0)
        #expect(Set(staleWrite.staleIDs) == Set(stale.map(\.id)))
        let staleFail = try await queue.fail(stale.map { Failure.permanent($0, reason: "stale") }, owner: "crashed")
        #expect(staleFail.written == 0)
        // Same owner name but the old claim number is fenced as well.
        let oldClaim = try await queue.complete(
            stale.map {
                Completion(
                    item: LeasedItem(id: $0.id, pair: $0.pair, attempt: 1, claim: 1, maxAttempts: 5),
                    context: context
                )
            },
            owner: "rescuer"
        )
        #expect(oldClaim.written == 0)

        let good = CommerceContext(customerNumber: "C1", priceTier: nil, currencyCode: "EUR")
        let fresh = try await queue.complete(reclaimed.map { Completion(item: $0, context: good) }, owner: "rescuer")
        #expect(fresh.written == 5 && fresh.staleIDs.isEmpty)
        let rows = try await contexts(queue)
        #expect(rows.values.allSatisfy { $0 == good })
    }

    @Test("a row taken over more than max-takeovers times is failed instead of handed out again, saying why")
    func rowTakenOverTooOftenFails() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        _ = try await enqueue(queue, Self.pairs(3), maxAttempts: 1)
        _ = try await queue.claim(owner: "crashed", limit: 3, lease: .milliseconds(1)).items
        try await Task.sleep(for: .milliseconds(20))
        let first = try await queue.claim(owner: "second", limit: 3, lease: .milliseconds(1), maxTakeovers: 1)
        #expect(first.items.count == 3 && first.failed == 0, "the first takeover is allowed")
        try await Task.sleep(for: .milliseconds(20))
        let next = try await queue.claim(owner: "third", limit: 3, lease: .seconds(60), maxTakeovers: 1)
        #expect(next.items.isEmpty && next.failed == 3, "the claim says how many it failed")
        #expect(try await queue.exactCounts() == QueueCounts(failed: 3))
        let rows = try await database.client.query(
            """
            SELECT attempts, takeovers, last_error
            FROM \(unescaped: "\"\(database.configuration.schema)\"").queue_items
            """
        ).collect().map { try $0.decode((Int32, Int32, String).self) }
        for (attempts, takeovers, reason) in rows {
            #expect(attempts == 0, "no call's outcome was ever written: no attempt spent")
            #expect(takeovers == 2)
            #expect(reason.contains("taken over from a stopped worker 2 times"))
        }
    }

    @Test("a crash loop spends no attempt: rows taken over five times keep all their attempts and still complete")
    func crashLoopSpendsNoAttempt() async throws {
        let queue = Queue(database: try TestDatabase.require())
        _ = try await enqueue(queue, Self.pairs(4), maxAttempts: 1)
        for cycle in 1...5 {
            let held = try await queue.claim(owner: "worker-\(cycle)", limit: 4, lease: .milliseconds(1)).items
            #expect(held.count == 4 && held.allSatisfy { $0.attempt == 1 }, "cycle \(cycle)")
            try await Task.sleep(for: .milliseconds(20))
        }
        let last = try await queue.claim(owner: "survivor", limit: 4, lease: .seconds(60)).items
        #expect(last.count == 4 && last.allSatisfy { $0.attempt == 1 && $0.claim == 6 })
        let context = CommerceContext(customerNumber: "C", priceTier: nil, currencyCode: nil)
        let written = try await queue.complete(last.map { Completion(item: $0, context: context) }, owner: "survivor")
        #expect(written.written == 4)
        #expect(try await queue.exactCounts() == QueueCounts(done: 4))
    }

    @Test("completion writes the context back, keeping API nulls distinct from not-enriched rows")
    func completionWritesContextBack() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        _ = try await enqueue(queue, Self.pairs(3))
        let items = try await queue.claim(owner: "w", limit: 2, lease: .seconds(60)).items
        let contexts = [
            CommerceContext(customerNumber: "CN-1", priceTier: "Wholesale", currencyCode: "USD"),
            CommerceContext(customerNumber: nil, priceTier: nil, currencyCode: nil),
        ]
        let outcome = try await queue.complete(
            zip(items, contexts).map { Completion(item: $0, context: $1) },
            owner: "w"
        )
        #expect(outcome == WriteOutcome(written: 2))
        let rows = try await database.client.query(
            """
            SELECT state, customer_number, price_tier, currency_code, enriched_at IS NOT NULL, lease_owner
            FROM \(unescaped: "\"\(database.configuration.schema)\"").queue_items ORDER BY id
            """
        ).collect()
        let decoded = try rows.map { try $0.decode((String, String?, String?, String?, Bool, String?).self) }
        #expect(decoded[0] == ("done", "CN-1", "Wholesale", "USD", true, nil))
        #expect(decoded[1] == ("done", nil, nil, nil, true, nil))
        #expect(decoded[2] == ("pending", nil, nil, nil, false, nil))
    }

    @Test("retryable failures return to pending later; the last attempt and permanent failures end failed")
    func failuresRetryThenFail() async throws {
        let database = try TestDatabase.require()
        let queue = Queue(database: database)
        _ = try await enqueue(queue, Self.pairs(2), maxAttempts: 2)
        var items = try await queue.claim(owner: "w", limit: 2, lease: .seconds(60)).items
        let outcome = try await queue.fail(
            [
                Failure(item: items[0], reason: "HTTP 503", retryAfter: .seconds(2)),
                .permanent(items[1], reason: "HTTP 400: malformed UserId"),
            ],
            owner: "w"
        )
        #expect(outcome.written == 2 && outcome.failedPermanently == 1)
        #expect(
            try await queue.claim(owner: "w", limit: 2, lease: .seconds(60)).items.isEmpty,
            "not available before its delay"
        )
        try await Task.sleep(for: .milliseconds(2_100))
        items = try await queue.claim(owner: "w", limit: 2, lease: .seconds(60)).items
        try #require(items.count == 1)
        #expect(items[0].attempt == 2)
        let last = try await queue.fail(
            [Failure(item: items[0], reason: "HTTP 503 again", retryAfter: .zero)],
            owner: "w"
        )
        #expect(last.failedPermanently == 1, "second of two attempts used: failed for good")
        #expect(try await queue.exactCounts() == QueueCounts(failed: 2))
        let reasons = try await database.client.query(
            "SELECT last_error FROM \(unescaped: "\"\(database.configuration.schema)\"").queue_items ORDER BY id"
        ).collect().map { try $0.decode(String.self) }
        #expect(reasons == ["HTTP 503 again", "HTTP 400: malformed UserId"])

        #expect(try await queue.requeueFailed() == 2)
        #expect(try await queue.exactCounts() == QueueCounts(pending: 2))
    }

    @Test("released rows go back to pending without spending the attempt")
    func releaseRefundsTheAttempt() async throws {
        let queue = Queue(database: try TestDatabase.require())
        _ = try await enqueue(queue, Self.pairs(4))
        let items = try await queue.claim(owner: "w", limit: 4, lease: .seconds(60)).items
        #expect(try await queue.release(items, owner: "other").written == 0, "only the owner can release")
        #expect(try await queue.release(items, owner: "w").written == 4)
        let again = try await queue.claim(owner: "w", limit: 4, lease: .seconds(60)).items
        #expect(again.allSatisfy { $0.attempt == 1 })
        #expect(try await queue.extendLeases(owner: "w", lease: .seconds(120)) == 4)
    }

    @Test("trigger-maintained counts match a full count after a mix of operations and after compaction")
    func countsMatchAFullScan() async throws {
        let queue = Queue(database: try TestDatabase.require())
        _ = try await enqueue(queue, Self.pairs(25_000))
        let items = try await queue.claim(owner: "w", limit: 300, lease: .seconds(60)).items
        _ = try await queue.complete(
            items.prefix(100).map {
                Completion(item: $0, context: CommerceContext(customerNumber: nil, priceTier: nil, currencyCode: nil))
            },
            owner: "w"
        )
        _ = try await queue.fail(items.dropFirst(100).prefix(50).map { .permanent($0, reason: "bad") }, owner: "w")
        _ = try await queue.fail(
            items.dropFirst(150).prefix(50).map { Failure(item: $0, reason: "503", retryAfter: .seconds(5)) },
            owner: "w"
        )
        let expected = QueueCounts(pending: 24_750, running: 100, done: 100, failed: 50)
        #expect(try await queue.exactCounts() == expected)
        #expect(try await queue.counts() == expected)
        try await queue.compactCounts()
        #expect(try await queue.counts() == expected)
    }

    private func contexts(_ queue: Queue) async throws -> [Int64: CommerceContext] {
        let rows = try await queue.database.client.query(
            """
            SELECT id, customer_number, price_tier, currency_code
            FROM \(unescaped: "\"\(queue.database.configuration.schema)\"").queue_items WHERE state = 'done'
            """
        ).collect()
        var result: [Int64: CommerceContext] = [:]
        for row in rows {
            let (id, customer, tier, currency) = try row.decode((Int64, String?, String?, String?).self)
            result[id] = CommerceContext(customerNumber: customer, priceTier: tier, currencyCode: currency)
        }
        return result
    }
}

/// Hands out pre-built chunks to `Queue.enqueue`'s producer closure.
final class ChunkBox: Sendable {
    private let chunks: Mutex<[[Pair]]>
    init(_ chunks: [[Pair]]) { self.chunks = Mutex(chunks.reversed()) }
    func next() -> [Pair]? { chunks.withLock { $0.popLast() } }
}

@Suite("New-work notifications", .freshSchema, .timeLimit(.minutes(1)))
struct NewWorkNotificationTests {
    @Test("enqueuing announces new pending rows on the schema's channel; the next available time is reported")
    func enqueueNotifies() async throws {
        let queue = Queue(database: try TestDatabase.require())
        #expect(try await queue.nextWork()?.delay == nil)
        let (signals, continuation) = AsyncStream.makeStream(of: Void.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await queue.listenForNewWork { continuation.yield() } }
            // LISTEN is in place once a notification sent afterwards arrives: keep enqueuing until one does.
            var iterator = signals.makeAsyncIterator()
            let box = ChunkBox([[Pair(organizationId: "o", userId: "u1")]])
            _ = try await queue.enqueue { box.next() }
            try await Task.sleep(for: .milliseconds(200))
            let retry = ChunkBox([[Pair(organizationId: "o", userId: "u2")]])
            _ = try await queue.enqueue { retry.next() }
            #expect(await iterator.next() != nil)
            group.cancelAll()
        }
        #expect(try await queue.nextWork()?.delay == .zero)
    }
}
