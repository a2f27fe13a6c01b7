import EnrichQueue

/// The database as a run sees it: the queue rows it claims and writes back, and its own record in the job
/// runs table. The pipeline talks to nothing else of PostgreSQL, so its logic (concurrency, shutdown,
/// retries, accounting) is tested against an in-memory store; ``PostgresRunStore`` is the real one.
///
/// Every method may throw when the database cannot be reached; a real store retries within the run's
/// outage budget first, so a throw means the run must stop.
public protocol RunStore: Sendable {
    /// Leases up to `limit` rows for this run.
    func claim(limit: Int) async throws -> Claimed
    /// Writes a batch of results back, all or nothing.
    func write(_ batch: WriteBackBatch) async throws -> WriteBackOutcome
    /// When work may next be available (zero or more), and whether rows are still leased; nil when the
    /// queue is settled (nothing pending or running).
    func nextWork() async throws -> Queue.NextWork?
    /// Marks runs whose process is gone abandoned and hands back the rows they (or other ended runs) held.
    func takeOverDeadRuns() async throws -> JobRuns.Abandoned
    /// Pushes the lease of every row this run holds forward.
    func extendLeases() async throws
    /// Rows by state (the progress total, the metrics).
    func counts() async throws -> QueueCounts
    /// What the workers of the schema share (for metrics); nil when it cannot be read now.
    func fleetStatus() async -> FleetStatus?
    /// Folds the per-state counters' deltas (periodic housekeeping).
    func compactCounts() async throws
    /// Proves the run alive; true when its liveness had to be taken again (its session had ended).
    func renewLiveness() async throws -> Bool
    /// Records a heartbeat; false when the run is no longer `running` (another runner marked it abandoned).
    func recordHeartbeat(_ heartbeat: HeartbeatRecord) async throws -> Bool
    /// Records how the run ended, trying for at most `time` (the database may be what failed).
    func recordEnd(_ end: RunEnd, within time: Duration) async throws
    /// Calls `wake` for every announcement of new pending rows until cancelled.
    func listenForNewWork(_ wake: @escaping @Sendable () -> Void) async throws
    /// Whether statements are failing right now (an outage is under way: not a stall).
    var isFailing: Bool { get }
    /// From now on, no statement may take longer than `time`: the run is stopping.
    func limitStatements(to time: Duration)
}

/// What a heartbeat records in the job runs row.
public struct HeartbeatRecord: Sendable, Equatable {
    public var counters: RunCounters
    /// The progress denominator: rows finished plus rows still to do.
    public var totalItems: Int64?
    /// How long the run has held rows without completing any (nil: it makes progress).
    public var stalledFor: Duration?

    public init(counters: RunCounters, totalItems: Int64? = nil, stalledFor: Duration? = nil) {
        self.counters = counters
        self.totalItems = totalItems
        self.stalledFor = stalledFor
    }
}

/// How a run ended, as its job runs row keeps it.
public struct RunEnd: Sendable, Equatable {
    public var state: RunState
    public var counters: RunCounters
    /// Why it failed or was cut short (secret-free).
    public var lastError: String?

    public init(state: RunState, counters: RunCounters, lastError: String? = nil) {
        self.state = state
        self.counters = counters
        self.lastError = lastError
    }
}
