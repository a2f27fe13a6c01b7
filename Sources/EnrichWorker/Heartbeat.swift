import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import Synchronization

/// The run's pulse, every ``WorkerConfiguration/heartbeatInterval``: proves the run alive (its liveness
/// lock), records its counters, progress total and stall in the job runs row, and watches for a stall (rows
/// held, none completed, while nothing is to be waited for). Throws to stop the run: when another runner
/// marked it abandoned, or when the stall lasted ``WorkerConfiguration/stallTimeout``.
struct Heartbeat<C: Clock>: Sendable where C.Duration == Duration {
    let context: RunContext<C>
    let rows: ClaimedRows<C>
    let ledger: RowLedger
    let progress: RunProgress
    let throttle: Throttle<C>
    let tokens: any TokenProvider
    private var store: any RunStore { context.store }
    private var accounting: RunAccounting { context.accounting }
    private var configuration: WorkerConfiguration { context.configuration }
    private var clock: C { context.clock }
    private var logger: Logger { context.logger }

    func run() async throws {
        var stall = StallWatch(warnAfter: configuration.stallWarning, stopAfter: configuration.stallTimeout)
        while true {
            try await clock.sleep(for: configuration.heartbeatInterval)
            if try await store.renewLiveness() {
                logger.notice("took the run's liveness lock again (its database session had ended)")
            }
            let counts = try await store.counts()
            let snapshot = accounting.snapshot
            let total = progress.update(finished: snapshot.finished, remaining: counts.pending + counts.running)
            let held = ledger.outstanding + rows.buffered
            let stalled = stall.observe(
                held: held,
                settled: snapshot.settled,
                answers: snapshot.calls,
                waiting: await throttle.isPaused() || store.isFailing,
                interval: configuration.heartbeatInterval
            )
            var counters = snapshot.counters
            counters.logins = Int64(await tokens.loginCount())
            let record = HeartbeatRecord(counters: counters, totalItems: total, stalledFor: stalled.reported)
            guard try await store.recordHeartbeat(record) else {
                throw WorkerError(
                    .abandoned,
                    "another runner marked this run abandoned (its liveness lock or heartbeat was gone, e.g. "
                        + "during a database outage longer than the stale limit); stopping so that two runs "
                        + "do not hold the same rows"
                )
            }
            await accounting.metrics.refresh(
                counts: counts,
                logins: Int(counters.logins),
                rate: await throttle.currentRate()
            )
            await accounting.metrics.refresh(fleet: await store.fleetStatus())
            if stalled.warn {
                logger.error(
                    "no row completed while holding rows, with the database and the API answering: looks stuck",
                    metadata: ["held": "\(held)", "for": "\(stalled.reported ?? .zero)"]
                )
            }
            if stalled.stop {
                throw WorkerError(
                    .stalled,
                    "no row completed for \(configuration.stallTimeout) while holding \(held) rows, with the "
                        + "database and the API answering; stopping so that the rows go to another run"
                )
            }
        }
    }
}

/// The rows' side of the heartbeat: extends the leases of the rows this run holds, takes over the rows of
/// dead runs, and folds the per-state counters every minute.
struct LeaseKeeper<C: Clock>: Sendable where C.Duration == Duration {
    let context: RunContext<C>
    let rows: ClaimedRows<C>
    private var store: any RunStore { context.store }
    private var configuration: WorkerConfiguration { context.configuration }

    func run() async throws {
        let compactionInterval = Duration.seconds(60)
        var sinceCompaction = Duration.zero
        while true {
            try await context.clock.sleep(for: configuration.heartbeatInterval)
            try await store.extendLeases()
            let abandoned = try await store.takeOverDeadRuns()
            WorkerLog.abandoned(abandoned, logger: context.logger)
            if abandoned.rowsFreed > 0 { rows.demand.fire() }
            sinceCompaction += configuration.heartbeatInterval
            if sinceCompaction >= compactionInterval {
                sinceCompaction = .zero
                try await store.compactCounts()
            }
        }
    }
}

/// The denominator of a run's progress: the rows it finished plus the rows still to do in the queue
/// (pending or running), measured at every heartbeat. Rows that arrive, are taken over or re-queued
/// mid-run move it, so progress stays true and never passes 100%.
final class RunProgress: Sendable {
    private let state: Mutex<Int64>

    init(initialTotal: Int64) { state = Mutex(initialTotal) }

    /// Records a fresh measure and returns the new total.
    func update(finished: Int64, remaining: Int64) -> Int64 {
        state.withLock {
            $0 = finished + remaining
            return $0
        }
    }

    /// The total to show when `finished` rows are done (never below what is finished).
    func total(finished: Int64) -> Int64 {
        state.withLock { max($0, finished) }
    }
}
