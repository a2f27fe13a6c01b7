import EnrichQueue
import NymbleAPI
import Synchronization

/// The one place a run's numbers go: every part of the pipeline reports what happened here (rows claimed,
/// calls and their answers, what a write-back did), and this keeps the counters of the job runs row and the
/// progress line, and feeds swift-metrics. A lock around a small struct: each event is a few additions, far
/// below the cost of the call it accounts for.
public final class RunAccounting: Sendable {
    /// What the progress line and the job runs row show.
    public struct Snapshot: Sendable, Equatable {
        public var counters = RunCounters()
        /// `/access` calls answered (each retry in place counts).
        public var calls: Int64 = 0
        /// 401 answers (each renews the shared token once).
        public var unauthorized: Int64 = 0
        /// Rows handed back to `pending` without spending an attempt (429 bound, shutdown).
        public var released: Int64 = 0
        /// Results discarded because another worker had taken the row over (lease lost).
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

    public var snapshot: Snapshot { state.withLock { $0 } }

    /// A claim leased `rows`, and failed `failed` others (taken over too often).
    func claimed(_ rows: Int, failed: Int) {
        if failed > 0 { metrics.recordWritten(done: 0, failed: failed, retried: 0) }
        state.withLock {
            $0.counters.claimed += Int64(rows)
            $0.counters.failed += Int64(failed)
        }
    }

    /// A call was answered (`error` nil: 200), after `duration`.
    func called(_ error: NymbleAPIError.Code?, duration: Duration) {
        metrics.recordCall(error, duration: duration)
        state.withLock {
            $0.calls += 1
            if error == .rateLimited { $0.counters.throttled += 1 }
            if error == .unauthorized { $0.unauthorized += 1 }
        }
    }

    /// An attempt did not succeed, for `reason` (a metrics label).
    func attemptFailed(_ reason: String) { metrics.recordError(reason) }

    /// A write-back wrote `outcome`.
    func wrote(_ outcome: WriteBackOutcome) {
        metrics.recordWritten(done: outcome.done, failed: outcome.failedForGood, retried: outcome.retried)
        state.withLock {
            $0.counters.succeeded += Int64(outcome.done)
            $0.counters.failed += Int64(outcome.failedForGood)
            $0.counters.retried += Int64(outcome.retried)
            $0.released += Int64(outcome.released)
            $0.stale += Int64(outcome.staleIDs.count)
        }
    }
}
