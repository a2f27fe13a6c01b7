import EnrichQueue
import Synchronization

/// The live counters of one run (and its swift-metrics), updated by every worker task (a lock around a small struct: each update is
/// a few additions, far below the cost of the HTTP call it accounts for).
public final class RunStatistics: Sendable {
    /// What the progress line and the job runs row show.
    public struct Snapshot: Sendable, Equatable {
        public var counters = RunCounters()
        /// `/access` calls sent (each retry in place counts).
        public var calls: Int64 = 0
        /// 401 answers (each renews the shared token once).
        public var unauthorized: Int64 = 0
        /// Rows handed back to `pending` without spending an attempt (429 bound, shutdown).
        public var released: Int64 = 0
        /// Results discarded because another worker had reclaimed the row (lease lost).
        public var stale: Int64 = 0

        public init() {}
    }

    private let state = Mutex(Snapshot())
    /// Where the same events go as swift-metrics (counters, the latency histogram, gauges).
    public let metrics: RunMetrics

    public init(metrics: RunMetrics = RunMetrics()) { self.metrics = metrics }

    func update(_ body: (inout Snapshot) -> Void) { state.withLock { body(&$0) } }

    /// Rows whose outcome reached the queue: `done`, `failed` for good, or back to pending (`retried`).
    /// Counted in the run's counters and its metrics alike.
    func recordWritten(done: Int, failed: Int, retried: Int) {
        metrics.recordWritten(done: done, failed: failed, retried: retried)
        update {
            $0.counters.succeeded += Int64(done)
            $0.counters.failed += Int64(failed)
            $0.counters.retried += Int64(retried)
        }
    }

    public var snapshot: Snapshot { state.withLock { $0 } }
}
