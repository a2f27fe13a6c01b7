import PostgresNIO

extension Queue {

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

    /// Refreshes the planner's statistics of the queue table when they are missing or lag far behind it
    /// (more rows changed since the last ANALYZE than a fifth of the table): returns whether it did. A role
    /// that does not own the table cannot (PostgreSQL would only warn): it leaves that to autovacuum.
    ///
    /// Why: a queue filled just before a run (the nightly enqueue) has no statistics until autovacuum's
    /// next round, and without them PostgreSQL plans each claim as a bitmap scan of every pending row plus
    /// a sort instead of a walk of the claim index that stops after the batch: measured, 42 ms instead of
    /// 15 ms per 500 rows on a 100,000-row queue, for the whole run. ANALYZE samples the table (tens of
    /// milliseconds) and does not block readers or writers.
    @discardableResult
    public func refreshStatisticsIfStale() async throws -> Bool {
        let rows = try await database.query(
            "read the queue's statistics age",
            """
            SELECT (coalesce(last_analyze, last_autoanalyze) IS NULL
                    OR n_mod_since_analyze > greatest(1000, n_live_tup / 5))
                AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = relid), 'MEMBER')
            FROM pg_stat_user_tables WHERE schemaname = \(database.configuration.schema) AND relname = 'queue_items'
            """
        )
        guard try rows.first?.decode(Bool.self) ?? false else { return false }
        try await database.query("analyze the queue", "ANALYZE \(unescaped: schema).queue_items")
        return true
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

    /// The LISTEN/NOTIFY channel on which new pending rows are announced.
    public var notificationChannel: String { "enrich_" + database.configuration.schema }

    /// What is left in an unsettled queue, for a claimer deciding how long to wait.
    public struct NextWork: Sendable, Equatable {
        /// Until the next `pending` row is available or the next `running` row's lease expires.
        public var delay: Duration
        /// Some row is `running` (leased by a run, maybe this one).
        public var running: Bool

        public init(delay: Duration, running: Bool) {
            self.delay = delay
            self.running = running
        }
    }

    /// When the queue may next have work for a claimer: the earliest of the next `pending` row's available
    /// time and the next `running` row's lease expiry (a crashed worker's rows are reclaimed then), and
    /// whether any row is still `running`. nil when no row is pending or running: the queue is settled. Both
    /// minimums come from partial indexes.
    public func nextWork() async throws -> NextWork? {
        let rows = try await database.query(
            "look for pending rows",
            """
            SELECT (CASE WHEN next IS NULL THEN NULL
                ELSE GREATEST(0, EXTRACT(EPOCH FROM (next - now()))) END)::float8, running IS NOT NULL
            FROM (SELECT least(
                (SELECT min(available_at) FROM \(unescaped: schema).queue_items WHERE state = 'pending'),
                running
            ) AS next, running FROM (
                SELECT min(lease_expires_at) AS running FROM \(unescaped: schema).queue_items WHERE state = 'running'
            ) AS leases) AS soonest
            """
        )
        guard let row = rows.first else { return nil }
        let (seconds, running) = try row.decode((Double?, Bool).self)
        guard let seconds else { return nil }
        return NextWork(delay: .milliseconds(Int64((seconds * 1000).rounded(.up))), running: running)
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
