import PostgresNIO

/// Dead runs: a `running` run whose process is gone is marked `abandoned`, and the rows it held are taken
/// back at once (see ``RunLiveness``).
extension JobRuns {
    /// After a server start, how long runs that began before it are given to take their liveness locks
    /// again before a missing lock counts as a death (runs retake it at their next heartbeat). A run that
    /// began after the server started took its lock from this server: a missing lock is a death at once.
    public static let restartGrace: Duration = .seconds(30)

    /// The first key of every run's liveness lock in this schema.
    static func livenessClass(schema: String) -> Int32 {
        // FNV-1a, so that the key is the same for every build and host.
        var hash: UInt32 = 2_166_136_261
        for byte in "enrich-run:\(schema)".utf8 {
            hash = (hash ^ UInt32(byte)) &* 16_777_619
        }
        return Int32(bitPattern: hash)
    }

    /// The SQL condition "run `r` is dead": its liveness lock is gone (and the server has been up long
    /// enough for live runs to have taken theirs again), or its heartbeat is older than `staleAfter` (nil:
    /// the lock alone decides).
    func deadCondition(staleAfter: Duration?) -> String {
        let key = Self.livenessClass(schema: database.configuration.schema)
        let stale =
            staleAfter.map { "r.heartbeat_at < now() - make_interval(secs => \($0.inSeconds))" } ?? "false"
        return """
            ((r.liveness AND (r.started_at > pg_postmaster_start_time()
                    OR pg_postmaster_start_time() < now() - make_interval(secs => \(Self.restartGrace.inSeconds)))
                AND NOT EXISTS (
                    SELECT 1 FROM pg_locks l
                    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND l.classid = (\(key))::oid AND l.objid = (r.id & 2147483647)::integer::oid))
             OR \(stale))
            """
    }

    /// What ``abandonDeadRuns(excluding:staleAfter:markedBy:maxTakeovers:)`` did.
    public struct Abandoned: Sendable, Equatable {
        /// Runs marked `abandoned`.
        public var runIDs: [Int64] = []
        /// Rows that dead (or ended) runs still held, handed back to `pending`.
        public var rowsFreed: Int = 0
        /// Of those, rows failed instead: taken over too often.
        public var rowsFailed: Int = 0

        public init(runIDs: [Int64] = [], rowsFreed: Int = 0, rowsFailed: Int = 0) {
            self.runIDs = runIDs
            self.rowsFreed = rowsFreed
            self.rowsFailed = rowsFailed
        }
    }

    /// Marks every `running` run of the schema whose process is dead `abandoned` (see ``RunLiveness``), with
    /// counters taken from the rows it wrote where its heartbeat never recorded them, and hands the rows
    /// that dead or ended runs still hold back to `pending` at once (counting a takeover; a row taken over
    /// more than `maxTakeovers` times is failed), instead of leaving them to lease expiry.
    ///
    /// Any run calls this when it starts and at every heartbeat; `excluding` is the caller's own run.
    @discardableResult
    public func abandonDeadRuns(
        excluding ownRun: Int64? = nil,
        staleAfter: Duration,
        markedBy runner: String,
        maxTakeovers: Int32 = Queue.defaultMaxTakeovers
    ) async throws -> Abandoned {
        let dead = deadCondition(staleAfter: staleAfter)
        let reason = Queue.takeoverReason("{n}")
        return try await run("mark dead runs abandoned") {
            try await database.transaction("mark dead runs abandoned") { session in
                let runs = try await session.query(
                    PostgresQuery(
                        unsafeSQL: """
                            WITH dead AS (
                                SELECT r.id FROM \(schema).job_runs r
                                WHERE r.state = 'running' AND r.id <> $1 AND \(dead)
                                FOR UPDATE OF r SKIP LOCKED
                            )
                            UPDATE \(schema).job_runs AS r SET state = 'abandoned', finished_at = now(),
                                stalled_since = NULL,
                                succeeded = GREATEST(r.succeeded, (SELECT count(*) FROM \(schema).queue_items i
                                    WHERE i.job_run_id = r.id AND i.state = 'done')),
                                failed = GREATEST(r.failed, (SELECT count(*) FROM \(schema).queue_items i
                                    WHERE i.job_run_id = r.id AND i.state = 'failed')),
                                last_error = CASE WHEN r.heartbeat_at < now() - make_interval(secs => $2)
                                        THEN 'no heartbeat since '
                                        ELSE 'its process is gone (liveness lock released); last heartbeat ' END
                                    || to_char(r.heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                                    || ' (host ' || r.host || ', pid ' || r.pid || '); marked by ' || $3
                            FROM dead WHERE r.id = dead.id
                            RETURNING r.id
                            """,
                        binds: try binds(ownRun ?? -1, staleAfter.inSeconds, runner)
                    )
                )
                let freed = try await session.query(
                    """
                    WITH held AS (
                        SELECT i.id, i.takeovers >= \(maxTakeovers) AS exhausted
                        FROM \(unescaped: schema).queue_items i
                        WHERE i.state = 'running' AND EXISTS (
                            SELECT 1 FROM \(unescaped: schema).job_runs r
                            WHERE r.id = i.job_run_id AND r.state <> 'running')
                        FOR UPDATE OF i SKIP LOCKED
                    )
                    UPDATE \(unescaped: schema).queue_items AS item SET
                        state = CASE WHEN held.exhausted THEN 'failed' ELSE 'pending' END,
                        takeovers = item.takeovers + 1, available_at = now(),
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
                        last_error = CASE WHEN held.exhausted
                            THEN replace(\(reason), '{n}', (item.takeovers + 1)::text) ELSE item.last_error END
                    FROM held WHERE item.id = held.id
                    RETURNING held.exhausted
                    """
                )
                var result = Abandoned()
                result.runIDs = try runs.map { try $0.decode(Int64.self) }
                result.rowsFreed = freed.count
                result.rowsFailed = try freed.filter { try $0.decode(Bool.self) }.count
                return result
            }
        }
    }

    /// Of the given `running` runs, those whose process is gone: their liveness lock was released (read
    /// only; status shows them as such; a stale heartbeat is judged by the caller).
    public func deadRuns(among ids: [Int64]) async throws -> Set<Int64> {
        guard !ids.isEmpty else { return [] }
        let dead = deadCondition(staleAfter: nil)
        return try await run("check run liveness") {
            let rows = try await database.query(
                "check run liveness",
                PostgresQuery(
                    unsafeSQL: """
                        SELECT r.id FROM \(schema).job_runs r
                        WHERE r.id = ANY($1) AND r.state = 'running' AND \(dead)
                        """,
                    binds: try binds(ids)
                )
            )
            return Set(try rows.map { try $0.decode(Int64.self) })
        }
    }

    /// The runs in state `running` (live, dead or stuck).
    public func runningIDs() async throws -> [Int64] {
        try await run("list running runs") {
            try await database.query(
                "list running runs",
                "SELECT id FROM \(unescaped: schema).job_runs WHERE state = 'running' ORDER BY id"
            ).map { try $0.decode(Int64.self) }
        }
    }
}
