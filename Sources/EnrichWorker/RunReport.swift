import EnrichQueue

/// Progress of a running job, handed to ``Worker``'s progress callback every
/// ``WorkerConfiguration/progressInterval``.
public struct WorkerProgress: Sendable {
    public var runID: Int64
    public var statistics: RunAccounting.Snapshot
    /// The progress denominator: rows finished plus rows still to do (moves with the queue).
    public var totalItems: Int64?
    public var elapsed: Duration
    /// Rows written (done or failed for good) per second over the last interval.
    public var itemsPerSecond: Double
    /// The throttle's current send rate; nil while unlimited.
    public var sendRate: Double?
    public var logins: Int
}

/// A stopping run that was still not gone at its stop deadline (see ``Worker``).
public struct StuckStop: Sendable {
    public var runID: Int64
    /// The state recorded for the run: `interrupted` (a signal) or `failed` (a fatal error).
    public var state: RunState
    /// Rows the run still held; they are taken over by the next run.
    public var heldRows: Int
    /// What happened, for the log and the job runs row.
    public var message: String
}

/// How a run ended.
public struct RunReport: Sendable {
    public var runID: Int64
    public var state: RunState
    public var statistics: RunAccounting.Snapshot
    public var logins: Int
    public var elapsed: Duration
    /// Why the run failed (state `failed`).
    public var error: (any Error)?
}
