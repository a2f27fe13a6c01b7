import EnrichCore
import PostgresNIO

/// The send budget every worker of a schema shares for one API (a row of `api_limiter`), GCRA-style: the
/// row holds the theoretical arrival time (`tat`) of the next free send slot on the database's clock, and a
/// process reserves a block of slots in one statement, so the fleet as a whole never sends faster than the
/// rate, at one round trip per block rather than per call. A 429 anywhere sets a fleet-wide pause that
/// every later reservation starts after.
public struct FleetLimiter: Sendable {
    public let database: Database
    /// The API base URL, normalized.
    public let key: String

    public init(database: Database, key: String) {
        self.database = database
        self.key = key
    }

    /// Creates the row when it does not exist yet.
    public func prepare() async throws {
        try await database.query(
            "prepare the shared send budget",
            """
            INSERT INTO \(unescaped: database.schema).api_limiter (key) VALUES (\(key))
            ON CONFLICT (key) DO NOTHING
            """
        )
    }

    /// Reserves `count` consecutive send slots at `rate` per second for the whole fleet, after any pause. A
    /// free slot may lag one interval behind now (the tolerance of GCRA), so that the time a process takes
    /// to come back for its next block is not lost to the fleet; idle time never banks a burst beyond that.
    /// `accepted`: calls this worker had accepted since it last reported (the fleet's leader measures them).
    public func reserve(
        count: Int,
        rate: Double,
        accepted: Int64 = 0,
        timeout: Duration? = nil
    ) async throws
        -> SharedReservation
    {
        let span = Double(count) / rate
        let rows = try await database.query(
            "reserve send slots",
            """
            UPDATE \(unescaped: database.schema).api_limiter SET
                tat = greatest(tat, now() - make_interval(secs => \(1 / rate)), paused_until)
                    + make_interval(secs => \(span)),
                reserved = reserved + \(Int64(count)), reservations = reservations + 1,
                accepted = accepted + \(accepted), updated_at = now()
            WHERE key = \(key)
            RETURNING EXTRACT(EPOCH FROM tat - make_interval(secs => \(span)) - now())::float8,
                \(unescaped: Self.pausedFor),
                (SELECT count(*) FROM \(unescaped: database.schema).job_runs
                 WHERE state = 'running' AND heartbeat_at > now() - interval '1 minute')::integer,
                pause_events, \(unescaped: Self.sharedRate), \(unescaped: Self.leaderAlive)
            """,
            timeout: timeout
        )
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "the shared send budget row \(key) is missing")
        }
        let (startsIn, pausedFor, liveRuns, events, rate, leading) = try row.decode(
            (Double, Double, Int32, Int64, Double?, Bool).self
        )
        return SharedReservation(
            startsIn: .seconds(startsIn),
            pausedFor: .seconds(pausedFor),
            liveWorkers: Int(liveRuns),
            pauseEvents: events,
            rate: rate,
            hasLeader: leading
        )
    }

    /// Pauses every worker of the fleet for `duration` from now (a longer pause already set stands); a pause
    /// set while none is in force starts a new congestion event. Returns the events so far.
    @discardableResult
    public func pause(for duration: Duration, timeout: Duration? = nil) async throws -> Int64 {
        let rows = try await database.query(
            "pause the fleet",
            """
            WITH paused AS (
                UPDATE \(unescaped: database.schema).api_limiter SET
                    paused_until = greatest(coalesce(paused_until, now()),
                                            now() + make_interval(secs => \(duration.inSeconds))),
                    pause_events = pause_events
                        + CASE WHEN coalesce(paused_until, now()) <= now() THEN 1 ELSE 0 END,
                    updated_at = now()
                WHERE key = \(key)
                RETURNING pause_events, EXTRACT(EPOCH FROM paused_until - now())::float8 AS seconds
            )
            SELECT pause_events, pg_notify(\(pauseChannel), \(key) || ' ' || pause_events || ' ' || seconds) IS NULL
            FROM paused
            """,
            timeout: timeout
        )
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "the shared send budget row \(key) is missing")
        }
        return try row.decode((Int64, Bool).self).0
    }

    /// The channel on which ``pause(for:timeout:)`` announces a pause to the fleet at once.
    public var pauseChannel: String { "enrich_fleet_" + database.configuration.schema }

    /// Calls `onPause` for every pause of this API announced by a worker of the fleet, until the task is
    /// cancelled. Holds one pooled connection for as long as it listens.
    public func listenForPauses(_ onPause: @Sendable (SharedPause) -> Void) async throws {
        let (channel, key) = (pauseChannel, key)
        try await database.client.withConnection { connection in
            try await connection.listen(on: channel) { notifications in
                for try await notification in notifications {
                    // "<key> <events> <seconds>"; the key (a URL) holds no space.
                    let words = notification.payload.split(separator: " ")
                    guard words.count == 3, words[0] == key, let events = Int64(words[1]),
                        let seconds = Double(words[2])
                    else { continue }
                    onPause(SharedPause(pausedFor: .seconds(max(seconds, 0)), events: events))
                }
            }
        }
    }

    /// The fleet-wide pause still in force (zero when none), the congestion events so far and the shared
    /// rate, adding the calls this worker had accepted since it last reported.
    public func pause(accepted: Int64, timeout: Duration? = nil) async throws -> SharedPause {
        let rows = try await database.query(
            "read the fleet pause",
            """
            UPDATE \(unescaped: database.schema).api_limiter SET accepted = accepted + \(accepted)
            WHERE key = \(key)
            RETURNING \(unescaped: Self.pausedFor), pause_events,
                \(unescaped: Self.sharedRate), \(unescaped: Self.leaderAlive)
            """,
            timeout: timeout
        )
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "the shared send budget row \(key) is missing")
        }
        let (paused, events, rate, leading) = try row.decode((Double, Int64, Double?, Bool).self)
        return SharedPause(pausedFor: .seconds(paused), events: events, rate: rate, hasLeader: leading)
    }

    /// Seconds the fleet-wide pause still holds (zero when none), on the database's clock.
    static let pausedFor = "greatest(EXTRACT(EPOCH FROM coalesce(paused_until, now()) - now()), 0)::float8"

    /// The shared rate as the workers should follow it: only while a leader is alive (or just gone), so
    /// that a rate learned by yesterday's fleet does not hold back today's.
    static let sharedRate = "CASE WHEN leader_until > now() - interval '10 seconds' THEN rate END"

    /// Whether a worker holds the lead now: the others try for it only when nobody does.
    static let leaderAlive = "coalesce(leader_until >= now(), false)"

    /// How long a lead lasts without being renewed: a leader that dies is replaced within this.
    public static let leadLease = Duration.seconds(2)

    /// Takes the lead of the fleet's adaptive rate for `owner` when nobody holds it (or its lease ran out),
    /// or renews it; a continuing leader stores `rate` and `ceiling`. Nil while another worker leads.
    public func lead(
        owner: String,
        rate: Double?,
        ceiling: Double?,
        timeout: Duration? = nil
    ) async throws
        -> SharedLead?
    {
        let schema = database.schema
        let lease = Self.leadLease.inSeconds
        let rows = try await database.query(
            "lead the fleet's rate",
            """
            UPDATE \(unescaped: schema).api_limiter SET
                rate = CASE WHEN leader = \(owner) THEN \(rate) ELSE rate END,
                ceiling = CASE WHEN leader = \(owner) THEN \(ceiling) ELSE ceiling END,
                rate_changes = rate_changes
                    + CASE WHEN leader = \(owner) AND rate IS DISTINCT FROM \(rate) THEN 1 ELSE 0 END,
                leader_turns = CASE WHEN leader = \(owner) THEN leader_turns + 1 ELSE 0 END,
                lead_gap = CASE WHEN leader = \(owner) THEN lead_gap ELSE now() - leader_until END,
                leader = \(owner), leader_until = now() + make_interval(secs => \(lease)), updated_at = now()
            WHERE key = \(key) AND (leader IS NULL OR leader = \(owner) OR leader_until < now())
            RETURNING leader_turns > 0, coalesce(lead_gap > interval '1 minute', true), accepted, pause_events,
                \(unescaped: Self.pausedFor), rate, ceiling
            """,
            timeout: timeout
        )
        guard let row = rows.first else { return nil }
        let (continued, stale, accepted, events, paused, rate, ceiling) = try row.decode(
            (Bool, Bool, Int64, Int64, Double, Double?, Double?).self
        )
        return SharedLead(
            continued: continued,
            stale: stale,
            accepted: accepted,
            events: events,
            pausedFor: .seconds(paused),
            rate: rate,
            ceiling: ceiling
        )
    }
}
