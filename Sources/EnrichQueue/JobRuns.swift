import Foundation
import Logging
import PostgresNIO

/// How a run was started.
public enum RunTrigger: String, Sendable, Codable, CaseIterable {
    case cli, cron
}

/// The lifecycle state of a job run.
public enum RunState: String, Sendable, Codable, CaseIterable {
    /// In progress (check `heartbeatAt` to tell a live run from a crashed one).
    case running
    /// Finished; every claimed row was written (some rows may have failed permanently).
    case succeeded
    /// Stopped by an error (see `lastError`).
    case failed
    /// Stopped by SIGINT/SIGTERM; unstarted rows were released.
    case interrupted
    /// Found `running` with a stale heartbeat and no live process: marked by a later run.
    case abandoned
}

/// The counters a run keeps in its job runs row.
public struct RunCounters: Sendable, Codable, Equatable {
    /// Rows leased from the queue.
    public var claimed: Int64 = 0
    /// Rows written back as `done`.
    public var succeeded: Int64 = 0
    /// Rows that ended `failed` (permanently, or out of attempts).
    public var failed: Int64 = 0
    /// Rows sent back to `pending` for a later attempt (5xx, timeout, dropped connection).
    public var retried: Int64 = 0
    /// 429 answers received.
    public var throttled: Int64 = 0
    /// Logins performed.
    public var logins: Int64 = 0

    public init(
        claimed: Int64 = 0,
        succeeded: Int64 = 0,
        failed: Int64 = 0,
        retried: Int64 = 0,
        throttled: Int64 = 0,
        logins: Int64 = 0
    ) {
        self.claimed = claimed
        self.succeeded = succeeded
        self.failed = failed
        self.retried = retried
        self.throttled = throttled
        self.logins = logins
    }
}

/// One row of the job runs (status) table.
public struct JobRun: Sendable, Codable, Equatable {
    public var id: Int64
    public var jobName: String
    public var trigger: RunTrigger
    public var host: String
    public var pid: Int32
    public var state: RunState
    public var startedAt: Date
    public var finishedAt: Date?
    public var heartbeatAt: Date
    /// Rows available when the run started (the denominator of progress and ETA).
    public var totalItems: Int64?
    public var counters: RunCounters
    public var lastError: String?
    /// Since when the run has held rows without completing any (a stuck run); nil while it makes progress.
    public var stalledSince: Date?

    public init(
        id: Int64,
        jobName: String,
        trigger: RunTrigger,
        host: String,
        pid: Int32,
        state: RunState,
        startedAt: Date,
        finishedAt: Date?,
        heartbeatAt: Date,
        totalItems: Int64?,
        counters: RunCounters,
        lastError: String?,
        stalledSince: Date? = nil
    ) {
        self.id = id
        self.jobName = jobName
        self.trigger = trigger
        self.host = host
        self.pid = pid
        self.state = state
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.heartbeatAt = heartbeatAt
        self.totalItems = totalItems
        self.counters = counters
        self.lastError = lastError
        self.stalledSince = stalledSince
    }
}

/// The typed API over the job runs table.
public struct JobRuns: Sendable {
    public let database: Database
    var schema: String { database.schema }
    var logger: Logger { database.logger }

    public init(database: Database) { self.database = database }

    /// What a run records when it starts.
    public struct Start: Sendable {
        public var jobName: String
        public var trigger: RunTrigger
        public var host: String
        public var pid: Int32
        public var totalItems: Int64?
        public var settingsJSON: String

        public init(
            jobName: String,
            trigger: RunTrigger,
            host: String = ProcessInfo.processInfo.hostName,
            pid: Int32 = ProcessInfo.processInfo.processIdentifier,
            totalItems: Int64?,
            settingsJSON: String = "{}"
        ) {
            self.jobName = jobName
            self.trigger = trigger
            self.host = host
            self.pid = pid
            self.totalItems = totalItems
            self.settingsJSON = settingsJSON
        }
    }

    /// Records the start of a run that holds no liveness lock (a run that failed before it began, for
    /// monitoring) and returns its id. Live runs start through ``RunLiveness/withRun(database:start:_:)``.
    public func start(_ start: Start) async throws -> Int64 {
        try await database.withSession("record the run start") { session in
            try await insert(start, liveness: false, on: session)
        }
    }

    func insert(_ start: Start, liveness: Bool, on session: DatabaseSession) async throws -> Int64 {
        let rows = try await session.query(
            """
            INSERT INTO \(unescaped: schema).job_runs
                (job_name, trigger, host, pid, total_items, settings, liveness)
            VALUES (\(start.jobName), \(start.trigger.rawValue), \(start.host), \(start.pid), \(start.totalItems),
                \(start.settingsJSON)::jsonb, \(liveness))
            RETURNING id
            """
        )
        guard let id = try rows.first?.decode(Int64.self) else {
            throw DatabaseError(.queryFailed, "recording the run start returned no id")
        }
        return id
    }

    /// Stores the current counters and moves the heartbeat to now. Returns false when the run is no longer
    /// `running` (another runner marked it abandoned after its heartbeat went stale).
    ///
    /// - Parameters:
    ///   - totalItems: the run's progress denominator when it changed (rows added or taken over mid-run).
    ///   - stalledSince: how long the run has held rows without completing any (nil: it makes progress).
    @discardableResult
    public func heartbeat(
        id: Int64,
        counters: RunCounters,
        totalItems: Int64? = nil,
        stalledFor: Duration? = nil
    ) async throws -> Bool {
        try await run("update the run heartbeat") {
            let rows = try await database.query(
                "update the run heartbeat",
                """
                WITH beat AS (
                    UPDATE \(unescaped: schema).job_runs SET heartbeat_at = now(),
                        claimed = \(counters.claimed), succeeded = \(counters.succeeded), failed = \(counters.failed),
                        retried = \(counters.retried), throttled = \(counters.throttled), logins = \(counters.logins),
                        total_items = COALESCE(\(totalItems), total_items),
                        stalled_since = CASE WHEN \(stalledFor?.inSeconds)::float8 IS NULL THEN NULL
                            ELSE COALESCE(stalled_since,
                                now() - make_interval(secs => \(stalledFor?.inSeconds ?? 0))) END
                    WHERE id = \(id) AND state = 'running'
                    RETURNING id, succeeded, failed, throttled
                ), sample AS (
                    \(unescaped: recordSample(from: "beat"))
                )
                SELECT id FROM beat
                """
            )
            return !rows.isEmpty
        }
    }

    /// The statement that keeps a run's counters as a sample for the status page (`run_samples`), from a
    /// `WITH` part named `part` returning the run's `id`, `succeeded`, `failed` and `throttled`.
    private func recordSample(from part: String) -> String {
        """
        INSERT INTO \(schema).run_samples (run_id, at, succeeded, failed, throttled)
        SELECT id, now(), succeeded, failed, throttled FROM \(part)
        ON CONFLICT DO NOTHING
        """
    }

    /// The database server's clock (status checks compare heartbeats with it, not with the local clock).
    public func now() async throws -> Date {
        try await run("read the database clock") {
            let rows = try await database.query("read the database clock", "SELECT now()")
            return try rows.first?.decode(Date.self) ?? Date()
        }
    }

    /// Records the end of a run: its final state, counters and (secret-free) last error.
    public func finish(id: Int64, state: RunState, counters: RunCounters, lastError: String?) async throws {
        try await run("record the run end") {
            try await database.query(
                "record the run end",
                """
                WITH ended AS (
                    UPDATE \(unescaped: schema).job_runs SET state = \(state.rawValue), finished_at = now(),
                        heartbeat_at = now(), stalled_since = NULL,
                        total_items = CASE WHEN \(state.rawValue) = 'succeeded'
                            THEN \(counters.succeeded + counters.failed)
                            ELSE GREATEST(total_items, \(counters.succeeded + counters.failed)) END,
                        claimed = \(counters.claimed), succeeded = \(counters.succeeded), failed = \(counters.failed),
                        retried = \(counters.retried), throttled = \(counters.throttled), logins = \(counters.logins),
                        last_error = \(lastError.map { String($0.prefix(2000)) })
                    WHERE id = \(id)
                    RETURNING id, succeeded, failed, throttled
                ), sample AS (
                    \(unescaped: recordSample(from: "ended"))
                )
                -- Samples are kept for two weeks: the status page draws the recent runs.
                DELETE FROM \(unescaped: schema).run_samples WHERE at < now() - interval '14 days'
                """
            )
        }
    }

    /// The most recent runs, newest first, optionally of one job and in one state.
    public func recent(limit: Int = 10, jobName: String? = nil, state: RunState? = nil) async throws -> [JobRun] {
        try await run("read job runs") {
            let rows = try await database.query(
                "read job runs",
                """
                SELECT \(unescaped: Self.columns)
                FROM \(unescaped: schema).job_runs
                WHERE (\(jobName)::text IS NULL OR job_name = \(jobName))
                    AND (\(state?.rawValue)::text IS NULL OR state = \(state?.rawValue))
                ORDER BY started_at DESC, id DESC
                LIMIT \(Int32(clamping: limit))
                """
            )
            return try rows.map(Self.jobRun(from:))
        }
    }

    /// One run by id.
    public func run(id: Int64) async throws -> JobRun? {
        try await run("read a job run") {
            let rows = try await database.query(
                "read a job run",
                """
                SELECT \(unescaped: Self.columns)
                FROM \(unescaped: schema).job_runs WHERE id = \(id)
                """
            )
            return try rows.first.map(Self.jobRun(from:))
        }
    }

    /// The columns ``jobRun(from:)`` decodes, in its order.
    static let columns = """
        id, job_name, trigger, host, pid, state, started_at, finished_at, heartbeat_at, total_items, \
        claimed, succeeded, failed, retried, throttled, logins, last_error, stalled_since
        """

    static func jobRun(from row: PostgresRow) throws -> JobRun {
        var cells = row.makeRandomAccess()[...].makeIterator()
        func next<T: PostgresDecodable>(_: T.Type = T.self) throws -> T {
            guard let cell = cells.next() else { throw DatabaseError(.queryFailed, "job run row is too short") }
            return try cell.decode(T.self, context: .default)
        }
        let id: Int64 = try next()
        let jobName: String = try next()
        let trigger = RunTrigger(rawValue: try next(String.self)) ?? .cli
        let host: String = try next()
        let pid: Int32 = try next()
        let state = RunState(rawValue: try next(String.self)) ?? .failed
        let startedAt: Date = try next()
        let finishedAt: Date? = try next()
        let heartbeatAt: Date = try next()
        let totalItems: Int64? = try next()
        let counters = RunCounters(
            claimed: try next(),
            succeeded: try next(),
            failed: try next(),
            retried: try next(),
            throttled: try next(),
            logins: try next()
        )
        let lastError: String? = try next()
        let stalledSince: Date? = try next()
        return JobRun(
            id: id,
            jobName: jobName,
            trigger: trigger,
            host: host,
            pid: pid,
            state: state,
            startedAt: startedAt,
            finishedAt: finishedAt,
            heartbeatAt: heartbeatAt,
            totalItems: totalItems,
            counters: counters,
            lastError: lastError,
            stalledSince: stalledSince
        )
    }

    /// Bind values for a query spliced with ``deadCondition(staleAfter:)``.
    func binds(_ values: any PostgresEncodable...) throws -> PostgresBindings {
        var bindings = PostgresBindings()
        for value in values { try bindings.append(value, context: .default) }
        return bindings
    }

    @discardableResult
    func run<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as DatabaseError {
            throw error
        } catch {
            throw DatabaseError.wrap(error, during: operation)
        }
    }
}
