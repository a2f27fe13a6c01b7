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
    public func reserve(count: Int, rate: Double, timeout: Duration? = nil) async throws -> SharedReservation {
        let span = Double(count) / rate
        let rows = try await database.query(
            "reserve send slots",
            """
            UPDATE \(unescaped: database.schema).api_limiter SET
                tat = greatest(tat, now() - make_interval(secs => \(1 / rate)), paused_until)
                    + make_interval(secs => \(span)),
                reserved = reserved + \(Int64(count)), reservations = reservations + 1, updated_at = now()
            WHERE key = \(key)
            RETURNING EXTRACT(EPOCH FROM tat - make_interval(secs => \(span)) - now())::float8,
                greatest(EXTRACT(EPOCH FROM coalesce(paused_until, now()) - now()), 0)::float8,
                (SELECT count(*) FROM \(unescaped: database.schema).job_runs
                 WHERE state = 'running' AND heartbeat_at > now() - interval '1 minute')::integer,
                pause_events
            """,
            timeout: timeout
        )
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "the shared send budget row \(key) is missing")
        }
        let (startsIn, pausedFor, liveRuns, events) = try row.decode((Double, Double, Int32, Int64).self)
        return SharedReservation(
            startsIn: .seconds(startsIn),
            pausedFor: .seconds(pausedFor),
            liveWorkers: Int(liveRuns),
            pauseEvents: events
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

    /// The fleet-wide pause still in force (zero when none) and the congestion events so far.
    public func pause(timeout: Duration? = nil) async throws -> SharedPause {
        let rows = try await database.query(
            "read the fleet pause",
            """
            SELECT greatest(EXTRACT(EPOCH FROM coalesce(paused_until, now()) - now()), 0)::float8, pause_events
            FROM \(unescaped: database.schema).api_limiter WHERE key = \(key)
            """,
            timeout: timeout
        )
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "the shared send budget row \(key) is missing")
        }
        let (paused, events) = try row.decode((Double, Int64).self)
        return SharedPause(pausedFor: .seconds(paused), events: events)
    }
}
