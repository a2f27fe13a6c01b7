import PostgresNIO

extension Queue {

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
}
