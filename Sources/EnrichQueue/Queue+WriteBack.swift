import PostgresNIO

extension Queue {
    /// Writes a batch of results back in **one statement** (so all of it or none of it is written): the
    /// commerce context of each completion (row `done`), each failure (row `failed` when permanent or out
    /// of attempts, else back to `pending` after its delay) and each release (back to `pending` after its
    /// delay, without an attempt). Every completion and failure counts the call in `attempts`.
    ///
    /// Rows this owner no longer holds under the same claim are left untouched and reported stale.
    ///
    /// With a ``WriteBackTarget`` the completions actually written are handed to the target's SQL in the
    /// same transaction: both are written or neither.
    public func writeBack(_ batch: WriteBackBatch, owner: String) async throws -> WriteBackOutcome {
        guard !batch.isEmpty else { return WriteBackOutcome() }
        let (statement, binds) = (statements.writeBack, try Self.writeBackBinds(batch, owner: owner))
        guard let target, !batch.completions.isEmpty else {
            return try Self.outcome(of: batch, rows: try await database.execute(statement, binds))
        }
        return try await database.transaction("write back results") { session in
            let outcome = try Self.outcome(of: batch, rows: try await session.execute(statement, binds))
            let stale = Set(outcome.staleIDs)
            try await target.run(batch.completions.filter { !stale.contains($0.item.id) }, in: session)
            return outcome
        }
    }

    /// The values of ``writeBackStatement(schema:)`` for `batch`.
    static func writeBackBinds(_ batch: WriteBackBatch, owner: String) throws -> [PostgresData] {
        let done = batch.completions
        let failures = batch.failures
        let releases = batch.releases
        // Bound arrays cannot carry NULL elements, so each nullable column travels with a presence mask.
        // PostgreSQL text cannot hold NUL; an API's error excerpt might.
        let reasons = failures.map { String($0.reason.replacingOccurrences(of: "\u{0}", with: "").prefix(2000)) }
        return [
            try PostgresData(binding: done.map(\.item.id)),
            try PostgresData(binding: done.map(\.item.claim)),
            try PostgresData(binding: done.map { $0.context.customerNumber ?? "" }),
            try PostgresData(binding: done.map { $0.context.customerNumber != nil }),
            try PostgresData(binding: done.map { $0.context.priceTier ?? "" }),
            try PostgresData(binding: done.map { $0.context.priceTier != nil }),
            try PostgresData(binding: done.map { $0.context.currencyCode ?? "" }),
            try PostgresData(binding: done.map { $0.context.currencyCode != nil }),
            try PostgresData(binding: owner),
            try PostgresData(binding: failures.map(\.item.id)),
            try PostgresData(binding: failures.map(\.item.claim)),
            try PostgresData(binding: reasons),
            try PostgresData(binding: failures.map { $0.retryAfter == nil }),
            try PostgresData(binding: failures.map { $0.retryAfter?.inSeconds ?? 0 }),
            try PostgresData(binding: releases.map(\.item.id)),
            try PostgresData(binding: releases.map(\.item.claim)),
            try PostgresData(binding: releases.map(\.after.inSeconds)),
            try PostgresData(binding: Int64(batch.count)),
        ]
    }

    /// The write-back, prepared on each connection. Completions: $1 ids, $2 claims, $3–$8 the three fields
    /// each with its presence mask; $9 the owner; failures: $10 ids, $11 claims, $12 reasons, $13 permanent,
    /// $14 delays in seconds; releases: $15 ids, $16 claims, $17 delays in seconds; $18 the batch's size.
    ///
    /// `lease_owner = owner` implies `state = 'running'` (queue_items_lease_check); saying `state` too would
    /// let the planner pick the partial run index and scan every running row of the run, which it did (a
    /// hash join over 80,000 rows per batch) when the statistics lagged behind a fast run. The owner is
    /// compared through coalesce() so that no statistics of `lease_owner` reach the estimate: statistics
    /// taken while no row was leased (after a run, or at the start of one) made the planner expect one
    /// matching row and write each batch with a table scan per row of the batch (200–360 ms per 500 rows on
    /// a 25,600-row queue); migration 7 stops collecting them, this also covers older statistics.
    static func writeBackStatement(schema: String) -> PreparedStatement {
        PreparedStatement(
            operation: "write back results",
            sql: """
                WITH done AS (
                    UPDATE \(schema).queue_items AS item SET
                        state = 'done', attempts = item.attempts + 1,
                        customer_number = CASE WHEN d.has_customer THEN d.customer END,
                        price_tier = CASE WHEN d.has_tier THEN d.tier END,
                        currency_code = CASE WHEN d.has_currency THEN d.currency END,
                        enriched_at = now(), last_error = NULL,
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                    FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bool[], $5::text[], $6::bool[],
                                $7::text[], $8::bool[])
                        AS d(id, claim, customer, has_customer, tier, has_tier, currency, has_currency)
                    WHERE item.id = d.id AND item.claims = d.claim
                        AND coalesce(item.lease_owner, '') = $9::text
                    RETURNING item.id
                ), failed AS (
                    UPDATE \(schema).queue_items AS item SET
                        state = CASE WHEN f.permanent OR item.attempts + 1 >= item.max_attempts
                            THEN 'failed' ELSE 'pending' END,
                        attempts = item.attempts + 1,
                        available_at = CASE WHEN f.permanent OR item.attempts + 1 >= item.max_attempts
                            THEN item.available_at ELSE now() + make_interval(secs => f.delay) END,
                        last_error = f.reason,
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                    FROM unnest($10::bigint[], $11::integer[], $12::text[], $13::bool[], $14::float8[])
                        AS f(id, claim, reason, permanent, delay)
                    WHERE item.id = f.id AND item.claims = f.claim
                        AND coalesce(item.lease_owner, '') = $9::text
                    RETURNING item.id, item.state = 'failed' AS for_good
                ), released AS (
                    UPDATE \(schema).queue_items AS item SET
                        state = 'pending', available_at = now() + make_interval(secs => r.delay),
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                    FROM unnest($15::bigint[], $16::integer[], $17::float8[]) AS r(id, claim, delay)
                    WHERE item.id = r.id AND item.claims = r.claim
                        AND coalesce(item.lease_owner, '') = $9::text
                    RETURNING item.id
                ), written AS (
                    SELECT 0 AS kind, id, false AS for_good FROM done
                    UNION ALL SELECT 1, id, for_good FROM failed
                    UNION ALL SELECT 2, id, false FROM released
                )
                SELECT count(*) FILTER (WHERE kind = 0), count(*) FILTER (WHERE kind = 1 AND for_good),
                    count(*) FILTER (WHERE kind = 1 AND NOT for_good), count(*) FILTER (WHERE kind = 2),
                    CASE WHEN count(*) < $18::bigint THEN coalesce(array_agg(id), '{}') END
                FROM written
                """
        )
    }

    /// The statement answers one row: the counts of each kind, and the ids written only when some of the
    /// batch were not (one row rather than one per result, which the server sent and the runner parsed and
    /// decoded for every pair).
    private static func outcome(of batch: WriteBackBatch, rows: [PostgresRow]) throws -> WriteBackOutcome {
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "write back results: the answer has no row")
        }
        var cells = RowCells(row, of: "write back results")
        var outcome = WriteBackOutcome()
        outcome.done = Int(try cells.next(Int64.self))
        outcome.failedForGood = Int(try cells.next(Int64.self))
        outcome.retried = Int(try cells.next(Int64.self))
        outcome.released = Int(try cells.next(Int64.self))
        if let written = try cells.nextIfPresent([Int64].self) {
            let written = Set(written)
            outcome.staleIDs = batch.ids.filter { !written.contains($0) }
        }
        return outcome
    }

    /// Writes completions back (see ``writeBack(_:owner:)``).
    public func complete(_ completions: [Completion], owner: String) async throws -> WriteOutcome {
        let outcome = try await writeBack(WriteBackBatch(completions: completions), owner: owner)
        return WriteOutcome(written: outcome.done, staleIDs: outcome.staleIDs)
    }

    /// Records failures (see ``writeBack(_:owner:)``).
    public func fail(_ failures: [Failure], owner: String) async throws -> WriteOutcome {
        let outcome = try await writeBack(WriteBackBatch(failures: failures), owner: owner)
        return WriteOutcome(
            written: outcome.failedForGood + outcome.retried,
            failedPermanently: outcome.failedForGood,
            staleIDs: outcome.staleIDs
        )
    }

    /// Hands held rows back to `pending` without counting an attempt (see ``writeBack(_:owner:)``).
    public func release(
        _ items: [LeasedItem],
        owner: String,
        after delay: Duration = .zero
    ) async throws
        -> WriteOutcome
    {
        let releases = items.map { Release(item: $0, after: delay) }
        let outcome = try await writeBack(WriteBackBatch(releases: releases), owner: owner)
        return WriteOutcome(written: outcome.released, staleIDs: outcome.staleIDs)
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
}
