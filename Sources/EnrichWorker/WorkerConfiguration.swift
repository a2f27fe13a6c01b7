import EnrichQueue
import EnrichThrottle

/// Everything a run takes, with production defaults. Every property is reachable from `enrich run`'s flags
/// and environment variables.
public struct WorkerConfiguration: Sendable {
    /// Name recorded in the job runs table (`enrich status` groups by it).
    public var jobName: String = "default"
    /// How the run was started: by hand or by cron.
    public var trigger: RunTrigger = .cli
    /// Keep running after the queue is empty and wake on new work (LISTEN/NOTIFY, polling as fallback).
    public var follow: Bool = false
    /// Concurrent `/api/auth/access` calls (the size of the bounded task group).
    public var concurrency: Int = 32
    /// A known ceiling of the API's rate, in requests per second; nil: unknown, found by backing off on 429s.
    public var rateLimit: Double? = nil
    /// Attempts per row before it is marked failed; nil keeps each row's own (set at enqueue, default 5).
    public var maxAttempts: Int32? = nil
    /// The most rows one claim leases; nil: twice the concurrency, at least 2,000. Each claim walks the
    /// pending index past the entries earlier claims left dead, so big batches cut the database CPU per row
    /// (by half from 100 to 500, measured). And a run with an instant API keeps a claim in flight nearly all
    /// the time: at 500 its worker tasks ran out of rows before every claim came back (the cores 85% busy), at
    /// 2,000 they rarely do (91–93%; BENCHMARKS.md). The run holds about one second of work (at least the
    /// concurrency) up to this, so only a run faster than 500 calls a second holds more.
    public var claimBatch: Int? = nil
    /// Takeovers a row may have (taken back from a worker that stopped while holding it) before it is
    /// failed: a row that keeps stopping its workers must end somewhere.
    public var maxTakeovers: Int32 = Queue.defaultMaxTakeovers
    /// How long a claimed row stays leased without a heartbeat; a crashed worker's rows are reclaimed after it.
    public var lease: Duration = .seconds(120)
    /// Interval of the job runs heartbeat, which also extends the leases this run holds.
    public var heartbeatInterval: Duration = .seconds(5)
    /// In follow mode, and while retries are pending, how often to look for work without a notification.
    public var pollInterval: Duration = .seconds(5)
    /// After SIGINT/SIGTERM, how long in-flight calls may take to finish before they are cancelled.
    public var shutdownGrace: Duration = .seconds(30)
    /// How long the database may stay unreachable before the run stops and is marked failed.
    public var databaseOutageLimit: Duration = .seconds(60)
    /// A run without a liveness lock (an older enrich) whose heartbeat is older than this is dead.
    public var staleAfter: Duration = .seconds(60)
    /// A run that holds rows but completes none for this long, while the database and the API answer, is
    /// stuck: it stops as failed (logged and shown by `status --check` well before); zero: never stop.
    public var stallTimeout: Duration = .seconds(180)
    /// Backoff (full jitter) before a row is retried after a 5xx, timeout or dropped connection.
    public var retryBackoff: Backoff = Backoff(base: .seconds(1), cap: .seconds(60))
    /// 429s one call may absorb in place (waiting out the shared pause) before its row is released for later.
    public var maximumThrottledRetries: Int = 20
    /// 401s one call may absorb in place (each renews the shared token) before its row counts a failed attempt.
    public var maximumUnauthorizedRetries: Int = 3
    /// Results are written back in batches of at most this many rows...
    public var writeBatch: Int = 500
    /// ...or after this long, whichever comes first.
    public var writeDelay: Duration = .milliseconds(10)
    /// Longest shared pause honoured from a 429's Retry-After.
    public var maximumPause: Duration = .seconds(300)
    /// How often the progress callback is called.
    public var progressInterval: Duration = .seconds(1)

    public init() {}

    /// The claim batch in effect.
    public var effectiveClaimBatch: Int { claimBatch ?? max(2 * concurrency, 2_000) }

    /// When a run without a liveness lock counts as dead: never sooner than a live run may spend riding out
    /// a database outage without heartbeats.
    public var effectiveStaleAfter: Duration { max(staleAfter, databaseOutageLimit + heartbeatInterval * 2) }

    /// How long without progress before a stall is logged and shown as stuck (long before it stops the run).
    var stallWarning: Duration { max(.seconds(30), heartbeatInterval * 3) }

    /// Throws when the settings cannot work together, or one the pipeline relies on is out of its range,
    /// naming the setting. (The ranges users see, with where a value came from, are checked where settings
    /// are read: `EnrichSettings`.)
    public func validate() throws(WorkerError) {
        func check(_ condition: Bool, _ setting: String, _ problem: String) throws(WorkerError) {
            if !condition { throw WorkerError.invalidSetting(setting, problem) }
        }
        try check(concurrency >= 1, "concurrency", "must be at least 1")
        try check(effectiveClaimBatch >= 1, "claim-batch", "must be at least 1")
        try check(writeBatch >= 1, "write-batch", "must be at least 1")
        try check(maxTakeovers >= 1, "max-takeovers", "must be at least 1")
        try check(lease >= .seconds(5), "lease", "must be at least 5 seconds")
        try check(
            heartbeatInterval > .zero && heartbeatInterval * 2 < lease,
            "heartbeat",
            "must be under half the lease"
        )
        try check(jobName.count >= 1 && jobName.count <= 200, "job-name", "must be 1 to 200 characters")
    }
}
