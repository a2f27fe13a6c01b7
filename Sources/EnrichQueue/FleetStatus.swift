import PostgresNIO

/// What `enrich status` shows of the fleet: the shared tokens (never the token itself), the shared send
/// budgets, and the live workers with their share of the rows finished.
public struct FleetStatus: Codable, Sendable, Equatable {
    public struct Token: Codable, Sendable, Equatable {
        /// The first 12 hex digits of the credentials key (base URL, OrgCode, ClientId hashed).
        public var key: String
        public var generation: Int64
        public var expiresInSeconds: Double?
        /// The worker logging in now, if any.
        public var loggingIn: String?
        public var loginsLastHour: Int
        /// Why the credentials were refused, while they are.
        public var refused: String?
        /// Renewals with a refresh token (B2B), ever.
        public var refreshes: Int64 = 0
        /// Sessions the fleet's last worker ended (B2B, AchieveApex), ever.
        public var sessionsEnded: Int64 = 0
    }

    public struct Budget: Codable, Sendable, Equatable {
        /// The API base URL.
        public var api: String
        public var pausedForSeconds: Double
        public var slotsReserved: Int64
        public var reservations: Int64
        /// Congestion events: pauses set while none was in force.
        public var pauses: Int64
        /// The fleet's adaptive rate as its live leader set it (nil: unlimited, or no leader alive).
        public var sharedRate: Double?
        /// The level the leader found too much at the last 429.
        public var ceiling: Double?
        /// The worker leading the adaptive rate (host:pid and a tag), while its lease holds.
        public var leader: String?
        /// Times the leader changed the shared rate.
        public var rateChanges: Int64
    }

    public struct Worker: Codable, Sendable, Equatable {
        public var runID: Int64
        public var host: String
        public var pid: Int32
        /// This worker's share of the rows the live workers finished.
        public var shareOfRows: Double
    }

    public var tokens: [Token]
    public var budgets: [Budget]
    public var workers: [Worker]

    /// Reads the fleet's state; runs in `dead` (their process is gone) are not counted as workers.
    public static func read(_ database: Database, dead: Set<Int64> = []) async throws -> FleetStatus {
        let schema = database.schema
        let tokens = try await database.query(
            "read the shared tokens",
            """
            SELECT left(key, 12), generation, EXTRACT(EPOCH FROM expires_at - now())::float8,
                CASE WHEN login_until > now() THEN login_owner END,
                (SELECT count(*) FROM unnest(login_times) AS t WHERE t > now() - interval '1 hour')::integer,
                refused_message, refreshes, logouts
            FROM \(unescaped: schema).api_credentials ORDER BY key
            """
        ).map { row in
            let (key, generation, expires, owner, logins, refused, refreshes, sessionsEnded) = try row.decode(
                (String, Int64, Double?, String?, Int32, String?, Int64, Int64).self
            )
            return Token(
                key: key,
                generation: generation,
                expiresInSeconds: expires,
                loggingIn: owner,
                loginsLastHour: Int(logins),
                refused: refused,
                refreshes: refreshes,
                sessionsEnded: sessionsEnded
            )
        }
        let budgets = try await database.query(
            "read the shared send budgets",
            """
            SELECT key, \(unescaped: FleetLimiter.pausedFor),
                reserved, reservations, pause_events, \(unescaped: FleetLimiter.sharedRate), ceiling,
                CASE WHEN leader_until > now() THEN leader END, rate_changes
            FROM \(unescaped: schema).api_limiter ORDER BY key
            """
        ).map { row in
            let (api, paused, reserved, reservations, pauses, rate, ceiling, leader, changes) = try row.decode(
                (String, Double, Int64, Int64, Int64, Double?, Double?, String?, Int64).self
            )
            return Budget(
                api: api,
                pausedForSeconds: paused,
                slotsReserved: reserved,
                reservations: reservations,
                pauses: pauses,
                sharedRate: rate,
                ceiling: ceiling,
                leader: leader,
                rateChanges: changes
            )
        }
        let live = try await database.query(
            "read the live workers",
            """
            SELECT id, host, pid, succeeded + failed FROM \(unescaped: schema).job_runs
            WHERE state = 'running' AND heartbeat_at > now() - interval '1 minute' ORDER BY id
            """
        ).map { try $0.decode((Int64, String, Int32, Int64).self) }.filter { !dead.contains($0.0) }
        let finished = Double(live.reduce(0) { $0 + $1.3 })
        let workers = live.map { run in
            Worker(runID: run.0, host: run.1, pid: run.2, shareOfRows: finished > 0 ? Double(run.3) / finished : 0)
        }
        return FleetStatus(tokens: tokens, budgets: budgets, workers: workers)
    }
}
