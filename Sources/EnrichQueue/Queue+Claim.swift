import PostgresNIO

extension Queue {
    /// Takeovers a row may have before it is failed (a row that keeps stopping its worker).
    public static let defaultMaxTakeovers: Int32 = 10

    /// The reason written on a row failed for too many takeovers.
    static func takeoverReason(_ takeovers: String) -> String {
        "taken over from a stopped worker \(takeovers) times: it may be what stops the workers (see their logs)"
    }

    /// Leases up to `limit` rows in one statement: the oldest available `pending` rows plus any `running`
    /// rows whose lease expired (a stalled or crashed worker's). Each claimed row gets `claims + 1` (the
    /// fence of this claim), this owner and a lease until now + `lease`; its `attempts` are untouched, since
    /// they count calls. Rows locked by a concurrent claimer are skipped, never shared.
    ///
    /// A row taken over from an expired lease counts a takeover; one taken over more than `maxTakeovers`
    /// times (it may be what stops its workers) is marked `failed` instead of being handed out again, and
    /// counted in ``Claimed/failed`` so that the run can count it.
    public func claim(
        owner: String,
        limit: Int,
        lease: Duration,
        runID: Int64? = nil,
        maxAttempts: Int32? = nil,
        maxTakeovers: Int32 = Queue.defaultMaxTakeovers
    ) async throws -> Claimed {
        let binds = [
            try PostgresData(binding: Int32(clamping: limit)),
            try PostgresData(binding: maxTakeovers),
            try PostgresData(binding: maxAttempts),
            try PostgresData(binding: owner),
            try PostgresData(binding: lease.inSeconds),
            try PostgresData(binding: Self.takeoverReason("{n}")),
            try PostgresData(binding: runID),
        ]
        let rows = try await database.execute(statements.claim, binds)
        var items: [LeasedItem] = []
        var failed = 0
        items.reserveCapacity(rows.count)
        for row in rows {
            // Cell by cell with concrete types (specialised here) rather than `row.decode` of a tuple, which
            // resolved generic metadata for each column of each row at run time: 3% of the runner's CPU per pair.
            var cells = RowCells(row, of: "claim")
            let id = try cells.next(Int64.self)
            let organization = try cells.next(String.self)
            let user = try cells.next(String.self)
            let attempts = try cells.next(Int32.self)
            let claim = try cells.next(Int32.self)
            let maxAttempts = try cells.next(Int32.self)
            let exhausted = try cells.next(Bool.self)
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
        return Claimed(items: items, failed: failed)
    }

    /// The claim, prepared on each connection: $1 limit, $2 most takeovers, $3 attempts allowed (NULL: keep
    /// each row's), $4 owner, $5 lease in seconds, $6 the reason for rows taken over too often (`{n}`: their
    /// takeovers), $7 the run (NULL: keep each row's).
    ///
    /// The rows picked are locked, so in the UPDATE `item.state` is still the state they were picked in:
    /// `running` means taken over from an expired lease. Reading it there (rather than joining the picked ids
    /// back to the table for their takeovers) saves an index probe per row, and the update finds its rows
    /// through the primary key whatever PostgreSQL estimates: a generic plan (which cannot see the limit and
    /// guesses a tenth of the table) joined them with a scan of the whole table.
    static func claimStatement(schema: String) -> PreparedStatement {
        PreparedStatement(
            operation: "claim",
            sql: """
                WITH expired AS MATERIALIZED (
                    SELECT id FROM \(schema).queue_items
                    WHERE state = 'running' AND lease_expires_at < now()
                    ORDER BY lease_expires_at
                    LIMIT $1::integer
                    FOR UPDATE SKIP LOCKED
                ), fresh AS MATERIALIZED (
                    SELECT id FROM \(schema).queue_items
                    WHERE state = 'pending' AND available_at <= now()
                    ORDER BY available_at, id
                    LIMIT $1::integer
                    FOR UPDATE SKIP LOCKED
                ), picked AS (
                    SELECT id FROM expired
                    UNION ALL
                    SELECT id FROM fresh
                    LIMIT $1::integer
                )
                UPDATE \(schema).queue_items AS item SET
                    state = CASE WHEN item.state = 'running' AND item.takeovers >= $2::integer
                        THEN 'failed' ELSE 'running' END,
                    claims = item.claims + 1,
                    takeovers = item.takeovers + CASE WHEN item.state = 'running' THEN 1 ELSE 0 END,
                    max_attempts = COALESCE($3::integer, item.max_attempts),
                    lease_owner = CASE WHEN item.state = 'running' AND item.takeovers >= $2::integer
                        THEN NULL ELSE $4::text END,
                    lease_expires_at = CASE WHEN item.state = 'running' AND item.takeovers >= $2::integer
                        THEN NULL ELSE now() + make_interval(secs => $5::float8) END,
                    last_error = CASE WHEN item.state = 'running' AND item.takeovers >= $2::integer
                        THEN replace($6::text, '{n}', (item.takeovers + 1)::text)
                        ELSE item.last_error END,
                    job_run_id = COALESCE($7::bigint, item.job_run_id),
                    updated_at = now()
                WHERE item.id = ANY (ARRAY(SELECT id FROM picked))
                RETURNING item.id, item.organization_id, item.user_id, item.attempts, item.claims, item.max_attempts,
                    item.state = 'failed'
                """
        )
    }
}
