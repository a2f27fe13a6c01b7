import Logging
import PostgresNIO

/// The typed API over the queue table: enqueue, claim, complete, fail, release, requeue and count.
///
/// Every write after a claim is fenced by the lease owner *and* the attempt number of that claim, so a
/// worker whose lease expired (and whose row was reclaimed by someone else) can never overwrite it.
public struct Queue: Sendable {
    public let database: Database
    var schema: String { database.schema }
    var logger: Logger { database.logger }

    public init(database: Database) { self.database = database }

    // MARK: Enqueue

    /// Enqueues pairs from a source that yields chunks, all in one transaction: if `nextChunk` throws
    /// (bad input on line 9,000), nothing at all is inserted.
    ///
    /// A pair already `pending` or `running` is left alone; one that is `done` or `failed` goes back to
    /// `pending` with its attempts reset (a re-sync), keeping its last written context until overwritten.
    public func enqueue(
        maxAttempts: Int32 = 5,
        nextChunk: () throws -> [Pair]?
    ) async throws -> EnqueueSummary {
        do {
            return try await database.withDirectSession("enqueue") { session in
                try await session.transaction { session in
                    var summary = EnqueueSummary()
                    while let chunk = try nextChunk() {
                        summary.read += chunk.count
                        var seen = Set<Pair>()
                        var organizations: [String] = []
                        var users: [String] = []
                        organizations.reserveCapacity(chunk.count)
                        users.reserveCapacity(chunk.count)
                        for pair in chunk where seen.insert(pair).inserted {
                            organizations.append(pair.organizationId)
                            users.append(pair.userId)
                        }
                        let (inserted, requeued) = try await insert(
                            source: "SELECT o, u FROM unnest(\(organizations)::text[], \(users)::text[]) AS p(o, u)",
                            maxAttempts: maxAttempts,
                            on: session
                        )
                        summary.inserted += inserted
                        summary.requeued += requeued
                    }
                    summary.alreadyQueued = summary.read - summary.inserted - summary.requeued
                    return summary
                }
            }
        } catch {
            throw rethrown(error, during: "enqueue")
        }
    }

    /// Enqueues every `(organization id, user id)` row that `sql` returns, in one transaction.
    ///
    /// The query runs in the queue's database with the caller's privileges; it must return exactly two
    /// columns, organization id then user id, castable to text. Rows with a null, empty, whitespace-only or
    /// over-256-character id reject the whole source, naming the first such row.
    ///
    /// - Parameter origin: where the query came from, to start error messages with (`--from-sql`, or a job
    ///   file's `jobs/nightly.json: source.sql`).
    public func enqueue(
        fromSQL sql: String,
        maxAttempts: Int32 = 5,
        origin: String = "--from-sql"
    ) async throws -> EnqueueSummary {
        let trimmed = sql.trimmingCharacters(in: .whitespacesAndNewlines.union(.init(charactersIn: ";")))
        guard !trimmed.isEmpty else { throw DatabaseError(.badSource, "\(origin): the query is empty") }
        let source = trimmed
        do {
            return try await database.withDirectSession(origin, statementTimeout: Self.bulkStatementTimeout) {
                session in
                try await session.transaction { connection in
                    let sample = try await connection.query(
                        "SELECT * FROM (\(unescaped: source)) AS source LIMIT 1"
                    )
                    guard let first = sample.first else { return EnqueueSummary() }
                    guard first.count == 2 else {
                        throw DatabaseError(
                            .badSource,
                            "\(origin): the query returns \(first.count) column\(first.count == 1 ? "" : "s"); it must "
                                + "return exactly 2 (organization id, then user id)"
                        )
                    }
                    let check = try await connection.query(
                        """
                        SELECT count(*) OVER (), n, o, u FROM (
                            SELECT row_number() OVER () AS n, o::text AS o, u::text AS u
                            FROM (\(unescaped: source)) AS source(o, u)
                        ) AS numbered
                        WHERE o IS NULL OR u IS NULL OR btrim(o) = '' OR btrim(u) = ''
                            OR length(o) > 256 OR length(u) > 256
                        LIMIT 1
                        """
                    )
                    if let bad = check.first {
                        let (_, row, organization, user) = try bad.decode((Int64, Int64, String?, String?).self)
                        let problem = Self.problem(organization: organization, user: user)
                        throw DatabaseError(.badSource, "\(origin) row \(row): \(problem); nothing was enqueued")
                    }
                    let total =
                        try await connection.query("SELECT count(*) FROM (\(unescaped: source)) AS source")
                        .first?.decode(Int64.self) ?? 0
                    let (inserted, requeued) = try await insert(
                        source: "SELECT DISTINCT o::text, u::text FROM (\(unescaped: source)) AS source(o, u)",
                        maxAttempts: maxAttempts,
                        on: connection
                    )
                    return EnqueueSummary(
                        read: Int(total),
                        inserted: inserted,
                        requeued: requeued,
                        alreadyQueued: Int(total) - inserted - requeued
                    )
                }
            }
        } catch {
            let error = unwrapTransactionError(error)
            if let error = error as? DatabaseError, error.code != .queryFailed && error.code != .schemaNotMigrated {
                throw error
            }
            let wrapped = DatabaseError.wrapped(error, during: origin)
            // A lost connection is not the query's fault.
            if wrapped.isTransient { throw wrapped }
            // A missing table here is the user's, not enrich's: drop the "run enrich migrate" hint.
            let message = wrapped.message.replacingOccurrences(of: ". Run `enrich migrate` first.", with: "")
            throw DatabaseError(.badSource, message + "; nothing was enqueued")
        }
    }

    private static func problem(organization: String?, user: String?) -> String {
        func issue(_ value: String?, _ field: String) -> String? {
            guard let value else { return "\(field) is null" }
            if value.allSatisfy(\.isWhitespace) { return "\(field) is empty or whitespace" }
            if value.count > 256 { return "\(field) is longer than 256 characters" }
            return nil
        }
        return issue(organization, "OrganizationId") ?? issue(user, "UserId") ?? "invalid id"
    }

    /// Inserts `(o, u)` rows from `source`; returns (inserted, requeued).
    private func insert(
        source: PostgresQuery,
        maxAttempts: Int32,
        on session: DatabaseSession
    ) async throws -> (Int, Int) {
        var query = PostgresQuery(
            unsafeSQL: """
                WITH written AS (
                    INSERT INTO \(schema).queue_items AS item (organization_id, user_id, max_attempts)
                    SELECT incoming.o, incoming.u, $\(source.binds.count + 1)::integer
                    FROM (\(source.sql)) AS incoming(o, u)
                    ON CONFLICT (organization_id, user_id) DO UPDATE
                        SET state = 'pending', attempts = 0, takeovers = 0, max_attempts = EXCLUDED.max_attempts,
                            available_at = now(), last_error = NULL, lease_owner = NULL,
                            lease_expires_at = NULL, updated_at = now()
                        WHERE item.state IN ('done', 'failed')
                    RETURNING (xmax = 0) AS fresh
                )
                SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM written
                """,
            binds: source.binds
        )
        query.binds.append(maxAttempts, context: .default)
        let row = try await session.query(query).first
        guard let row else { return (0, 0) }
        let (inserted, requeued) = try row.decode((Int64, Int64).self)
        return (Int(inserted), Int(requeued))
    }

    // MARK: Claim

    /// Leases up to `limit` rows in one statement: the oldest available `pending` rows plus any `running`
    /// rows whose lease expired (a stalled or crashed worker's). Each claimed row gets `claims + 1` (the
    /// fence of this claim), this owner and a lease until now + `lease`; its `attempts` are untouched, since
    /// they count calls. Rows locked by a concurrent claimer are skipped, never shared.
    ///
    /// A row taken over from an expired lease counts a takeover; one taken over more than `maxTakeovers`
    /// times (it may be what stops its workers) is marked `failed` instead of being handed out again.
    public func claim(
        owner: String,
        limit: Int,
        lease: Duration,
        runID: Int64? = nil,
        maxAttempts: Int32? = nil,
        maxTakeovers: Int32 = Queue.defaultMaxTakeovers
    ) async throws -> [LeasedItem] {
        try await claimCounting(
            owner: owner,
            limit: limit,
            lease: lease,
            runID: runID,
            maxAttempts: maxAttempts,
            maxTakeovers: maxTakeovers
        ).items
    }

    /// Takeovers a row may have before it is failed (a row that keeps stopping its worker).
    public static let defaultMaxTakeovers: Int32 = 10

    /// The reason written on a row failed for too many takeovers.
    static func takeoverReason(_ takeovers: String) -> String {
        "taken over from a stopped worker \(takeovers) times: it may be what stops the workers (see their logs)"
    }

    /// ``claim(owner:limit:lease:runID:maxAttempts:maxTakeovers:)``, also saying how many rows it marked
    /// `failed` (taken over too often), so that the run can count them.
    public func claimCounting(
        owner: String,
        limit: Int,
        lease: Duration,
        runID: Int64? = nil,
        maxAttempts: Int32? = nil,
        maxTakeovers: Int32 = Queue.defaultMaxTakeovers
    ) async throws -> (items: [LeasedItem], failed: Int) {
        let limit = Int32(clamping: limit)
        let reasonPrefix = Self.takeoverReason("{n}")
        let rows = try await database.query(
            "claim",
            """
            WITH expired AS MATERIALIZED (
                SELECT id FROM \(unescaped: schema).queue_items
                WHERE state = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at
                LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            ), fresh AS MATERIALIZED (
                SELECT id FROM \(unescaped: schema).queue_items
                WHERE state = 'pending' AND available_at <= now()
                ORDER BY available_at, id
                LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            ), picked AS (
                SELECT id, true AS reclaimed FROM expired
                UNION ALL
                SELECT id, false AS reclaimed FROM fresh
                LIMIT \(limit)
            ), decided AS (
                SELECT item.id, picked.reclaimed, picked.reclaimed AND item.takeovers >= \(maxTakeovers) AS exhausted
                FROM picked JOIN \(unescaped: schema).queue_items AS item ON item.id = picked.id
            )
            UPDATE \(unescaped: schema).queue_items AS item SET
                state = CASE WHEN decided.exhausted THEN 'failed' ELSE 'running' END,
                claims = item.claims + 1,
                takeovers = item.takeovers + CASE WHEN decided.reclaimed THEN 1 ELSE 0 END,
                max_attempts = COALESCE(\(maxAttempts)::integer, item.max_attempts),
                lease_owner = CASE WHEN decided.exhausted THEN NULL ELSE \(owner) END,
                lease_expires_at = CASE WHEN decided.exhausted THEN NULL
                    ELSE now() + make_interval(secs => \(lease.inSeconds)) END,
                last_error = CASE WHEN decided.exhausted
                    THEN replace(\(reasonPrefix), '{n}', (item.takeovers + 1)::text)
                    ELSE item.last_error END,
                job_run_id = COALESCE(\(runID)::bigint, item.job_run_id),
                updated_at = now()
            FROM decided
            WHERE item.id = decided.id
            RETURNING item.id, item.organization_id, item.user_id, item.attempts, item.claims, item.max_attempts,
                decided.exhausted
            """
        )
        var items: [LeasedItem] = []
        var failed = 0
        items.reserveCapacity(rows.count)
        for row in rows {
            let (id, organization, user, attempts, claim, maxAttempts, exhausted) = try row.decode(
                (Int64, String, String, Int32, Int32, Int32, Bool).self
            )
            if exhausted {
                failed += 1
                continue
            }
            items.append(
                LeasedItem(
                    id: id,
                    pair: Pair(organizationId: organization, userId: user),
                    attempt: attempts + 1,
                    claim: claim,
                    maxAttempts: maxAttempts
                )
            )
        }
        items.sort { $0.id < $1.id }
        return (items, failed)
    }

    // MARK: Write back

    /// Writes the commerce context of each completion and marks the rows `done`.
    /// Rows this owner no longer holds (same attempt) are left untouched and reported in `staleIDs`.
    public func complete(_ completions: [Completion], owner: String) async throws -> WriteOutcome {
        guard !completions.isEmpty else { return WriteOutcome() }
        var ids: [Int64] = []
        var claims: [Int32] = []
        var customers: [String] = []
        var tiers: [String] = []
        var currencies: [String] = []
        // Bound arrays cannot carry NULL elements, so each nullable column travels with a presence mask.
        var hasCustomer: [Bool] = []
        var hasTier: [Bool] = []
        var hasCurrency: [Bool] = []
        for completion in completions {
            ids.append(completion.item.id)
            claims.append(completion.item.claim)
            customers.append(completion.context.customerNumber ?? "")
            hasCustomer.append(completion.context.customerNumber != nil)
            tiers.append(completion.context.priceTier ?? "")
            hasTier.append(completion.context.priceTier != nil)
            currencies.append(completion.context.currencyCode ?? "")
            hasCurrency.append(completion.context.currencyCode != nil)
        }
        let rows = try await database.query(
            "write back completions",
            """
            UPDATE \(unescaped: schema).queue_items AS item SET
                state = 'done', attempts = item.attempts + 1,
                customer_number = CASE WHEN done.has_customer THEN done.customer END,
                price_tier = CASE WHEN done.has_tier THEN done.tier END,
                currency_code = CASE WHEN done.has_currency THEN done.currency END,
                enriched_at = now(), last_error = NULL,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
            FROM unnest(\(ids)::bigint[], \(claims)::integer[], \(customers)::text[], \(hasCustomer)::bool[],
                        \(tiers)::text[], \(hasTier)::bool[], \(currencies)::text[], \(hasCurrency)::bool[])
                AS done(id, claim, customer, has_customer, tier, has_tier, currency, has_currency)
            WHERE item.id = done.id AND item.claims = done.claim
                AND item.state = 'running' AND item.lease_owner = \(owner)
            RETURNING item.id
            """
        )
        return try outcome(sent: ids, writtenRows: rows)
    }

    /// Records failures. A permanent failure (or one that used the last attempt) makes the row `failed`
    /// with its reason; otherwise the row goes back to `pending`, available again after `retryAfter`.
    public func fail(_ failures: [Failure], owner: String) async throws -> WriteOutcome {
        guard !failures.isEmpty else { return WriteOutcome() }
        let ids = failures.map(\.item.id)
        let claims = failures.map(\.item.claim)
        // PostgreSQL text cannot hold NUL; an API's error excerpt might.
        let reasons = failures.map { String($0.reason.replacingOccurrences(of: "\u{0}", with: "").prefix(2000)) }
        let permanent = failures.map { $0.retryAfter == nil }
        let delays = failures.map { $0.retryAfter?.inSeconds ?? 0 }
        let rows = try await database.query(
            "record failures",
            """
            UPDATE \(unescaped: schema).queue_items AS item SET
                state = CASE WHEN failure.permanent OR item.attempts + 1 >= item.max_attempts
                    THEN 'failed' ELSE 'pending' END,
                attempts = item.attempts + 1,
                available_at = CASE WHEN failure.permanent OR item.attempts + 1 >= item.max_attempts
                    THEN item.available_at ELSE now() + make_interval(secs => failure.delay) END,
                last_error = failure.reason,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
            FROM unnest(\(ids)::bigint[], \(claims)::integer[], \(reasons)::text[], \(permanent)::bool[],
                        \(delays)::float8[])
                AS failure(id, claim, reason, permanent, delay)
            WHERE item.id = failure.id AND item.claims = failure.claim
                AND item.state = 'running' AND item.lease_owner = \(owner)
            RETURNING item.id, item.state = 'failed'
            """
        )
        var outcome = try outcome(sent: ids, writtenRows: rows)
        for row in rows where try row.decode((Int64, Bool).self).1 { outcome.failedPermanently += 1 }
        return outcome
    }

    /// Hands held rows back to `pending` without counting the attempt: for rows claimed but never called
    /// (shutdown), or deferred for a reason that is not the row's fault (429, token renewal).
    public func release(
        _ items: [LeasedItem],
        owner: String,
        after delay: Duration = .zero
    ) async throws
        -> WriteOutcome
    {
        guard !items.isEmpty else { return WriteOutcome() }
        let ids = items.map(\.id)
        let claims = items.map(\.claim)
        let rows = try await database.query(
            "release rows",
            """
            UPDATE \(unescaped: schema).queue_items AS item SET
                state = 'pending',
                available_at = now() + make_interval(secs => \(delay.inSeconds)),
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
            FROM unnest(\(ids)::bigint[], \(claims)::integer[]) AS held(id, claim)
            WHERE item.id = held.id AND item.claims = held.claim
                AND item.state = 'running' AND item.lease_owner = \(owner)
            RETURNING item.id
            """
        )
        return try outcome(sent: ids, writtenRows: rows)
    }

    /// Pushes the lease expiry of rows still held by `owner` to now + `lease`; returns how many were extended.
    @discardableResult
    public func extendLeases(owner: String, lease: Duration) async throws -> Int {
        let rows = try await database.query(
            "extend leases",
            """
            WITH held AS (
                -- SKIP LOCKED: rows a concurrent write-back holds are being finished anyway, and locking
                -- them in another order than that UPDATE deadlocked (seen under load, then retried).
                SELECT id FROM \(unescaped: schema).queue_items
                WHERE state = 'running' AND lease_owner = \(owner) AND lease_expires_at > now()
                FOR UPDATE SKIP LOCKED
            ), extended AS (
                UPDATE \(unescaped: schema).queue_items AS item SET
                    lease_expires_at = now() + make_interval(secs => \(lease.inSeconds))
                FROM held WHERE item.id = held.id
                RETURNING 1
            )
            SELECT count(*) FROM extended
            """
        )
        return Int(try rows.first?.decode(Int64.self) ?? 0)
    }

    /// Puts every `failed` row back to `pending` with fresh attempts; returns how many.
    @discardableResult
    public func requeueFailed() async throws -> Int {
        let rows = try await database.query(
            "requeue failed rows",
            """
            WITH requeued AS (
                UPDATE \(unescaped: schema).queue_items SET
                    state = 'pending', attempts = 0, takeovers = 0, available_at = now(), updated_at = now()
                WHERE state = 'failed'
                RETURNING 1
            )
            SELECT count(*) FROM requeued
            """
        )
        return Int(try rows.first?.decode(Int64.self) ?? 0)
    }

    // MARK: Counts

    /// Row counts by state from the trigger-maintained counters: constant time however long the queue.
    public func counts() async throws -> QueueCounts {
        let rows = try await database.query("count rows", "SELECT state, items FROM \(unescaped: schema).queue_summary")
        return try Self.counts(from: rows)
    }

    /// Row counts by a full scan of the queue table; slow on big queues, used to cross-check ``counts()``.
    public func exactCounts() async throws -> QueueCounts {
        let rows = try await database.query(
            "count rows",
            "SELECT state, count(*) FROM \(unescaped: schema).queue_items GROUP BY state"
        )
        return try Self.counts(from: rows)
    }

    /// Folds the counters' appended deltas into one row per state (the worker calls this periodically).
    public func compactCounts() async throws {
        try await database.query("compact counters", "SELECT \(unescaped: schema).compact_queue_counts()")
    }

    /// Pending rows that are available now (what a run still has to do).
    public func availableCount() async throws -> Int64 {
        let rows = try await database.query(
            "count available rows",
            "SELECT count(*) FROM \(unescaped: schema).queue_items WHERE state = 'pending' AND available_at <= now()"
        )
        return try rows.first?.decode(Int64.self) ?? 0
    }

    private static func counts(from rows: [PostgresRow]) throws -> QueueCounts {
        var counts = QueueCounts()
        for row in rows {
            let (state, count) = try row.decode((String, Int64).self)
            if let state = ItemState(rawValue: state) { counts[state] = count }
        }
        return counts
    }

    // MARK: Helpers

    private func outcome(sent ids: [Int64], writtenRows rows: [PostgresRow]) throws -> WriteOutcome {
        var written = Set<Int64>()
        for row in rows { written.insert(try row.makeRandomAccess()[0].decode(Int64.self, context: .default)) }
        return WriteOutcome(written: written.count, staleIDs: ids.filter { !written.contains($0) })
    }

    private func rethrown(_ error: any Error, during operation: String) -> any Error {
        DatabaseError.wrap(error, during: operation)
    }

    /// Statements of a bulk load (a `--from-sql` source over a big table) may take minutes.
    static let bulkStatementTimeout: Duration = .seconds(1800)
}

extension Queue {
    /// The LISTEN/NOTIFY channel on which new pending rows are announced.
    public var notificationChannel: String { "enrich_" + database.configuration.schema }

    /// When the queue may next have work for a claimer: the earliest of the next `pending` row's available
    /// time and the next `running` row's lease expiry (a crashed worker's rows are reclaimed then). nil when
    /// no row is pending or running: the queue is settled. Both minimums come from partial indexes.
    public func nextWorkDelay() async throws -> Duration? {
        let rows = try await database.query(
            "look for pending rows",
            """
            SELECT (CASE WHEN next IS NULL THEN NULL
                ELSE GREATEST(0, EXTRACT(EPOCH FROM (next - now()))) END)::float8
            FROM (SELECT least(
                (SELECT min(available_at) FROM \(unescaped: schema).queue_items WHERE state = 'pending'),
                (SELECT min(lease_expires_at) FROM \(unescaped: schema).queue_items WHERE state = 'running')
            ) AS next) AS soonest
            """
        )
        guard let seconds = try rows.first?.decode(Double?.self) else { return nil }
        return .milliseconds(Int64((seconds * 1000).rounded(.up)))
    }

    /// Runs `onNotification` for every announcement of new pending rows until the task is cancelled.
    /// Holds one pooled connection for as long as it listens.
    public func listenForNewWork(_ onNotification: @Sendable () -> Void) async throws {
        let channel = notificationChannel
        try await database.client.withConnection { connection in
            try await connection.listen(on: channel) { notifications in
                for try await _ in notifications { onNotification() }
            }
        }
    }
}
