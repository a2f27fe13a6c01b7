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

        /// Rows this run finished for good: done, or failed permanently.
        public var finished: Int64 { counters.succeeded + counters.failed }

        /// Rows whose outcome reached the queue, in any way: the measure of progress.
        public var settled: Int64 { counters.succeeded + counters.failed + counters.retried + released + stale }
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

/// The denominator of a run's progress: the rows it finished plus the rows still to do in the queue
/// (pending or running), measured at every heartbeat. Rows that arrive, are taken over or re-queued
/// mid-run move it, so progress stays true and never passes 100%.
final class RunProgress: Sendable {
    private let state: Mutex<(total: Int64, finishedAtMeasure: Int64)>

    init(initialTotal: Int64) { state = Mutex((initialTotal, 0)) }

    /// Records a fresh measure and returns the new total.
    func update(finished: Int64, remaining: Int64) -> Int64 {
        state.withLock {
            $0 = (finished + remaining, finished)
            return $0.total
        }
    }

    /// The total to show when `finished` rows are done: rows finished since the last measure came out of
    /// the remaining ones, so the total never falls below what is finished.
    func total(finished: Int64) -> Int64 {
        state.withLock { max($0.total, finished) }
    }
}
