import EnrichQueue
import Logging
import Synchronization

/// The rows a run works through, as an `AsyncSequence` (after swift-jobs' `JobQueueProcessor`) shared by the
/// pipeline's worker tasks, each iterating it; its claimer (``runClaimer()``) refills it in the background.
///
/// It keeps about one second of work claimed (what the loop takes per second, at least the concurrency, at
/// most the claim batch; ``ClaimSizer``) and claims again when half of that is left, so a worker task almost
/// never waits for the database, memory stays flat however long the queue is, and a worker that dies
/// leaves few rows behind: rows held in all (claimed, calling, or waiting for the writer) stay under that
/// target plus the concurrency plus two write batches. The sequence ends when the run stops, or, in drain
/// mode, when the queue is settled: every row handed out is written back (``RowLedger``), nothing is pending
/// (rows waiting for a retry are waited for) and nothing is running under another live run (a dead run's
/// rows are taken over at once). In follow mode it waits for new work instead.
final class ClaimedRows<C: Clock>: AsyncSequence, Sendable where C.Duration == Duration {
    typealias Element = LeasedItem

    private struct State {
        var buffer: [LeasedItem] = []
        var head = 0
        var stopped = false
        var exhausted = false
        /// Worker tasks waiting for a row, first come first served.
        var consumers: [(id: UInt64, continuation: CheckedContinuation<LeasedItem?, Never>)] = []
        var nextConsumerID: UInt64 = 0
        var sizer: ClaimSizer<C.Instant>

        var buffered: Int { buffer.count - head }

        /// Removes the waiting consumers, to resume them with nil (the sequence ended).
        mutating func takeConsumers() -> [CheckedContinuation<LeasedItem?, Never>] {
            defer { consumers = [] }
            return consumers.map(\.continuation)
        }

        mutating func popFirst() -> LeasedItem? {
            guard head < buffer.count else { return nil }
            let item = buffer[head]
            head += 1
            if head == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 1024 && head * 2 >= buffer.count {
                buffer.removeFirst(head)
                head = 0
            }
            return item
        }
    }

    private let state: Mutex<State>
    private let context: RunContext<C>
    private let ledger: RowLedger
    private var store: any RunStore { context.store }
    private var configuration: WorkerConfiguration { context.configuration }
    private var clock: C { context.clock }
    private var logger: Logger { context.logger }
    /// Wakes the claimer: rows were taken, results were written (``RowLedger``), a notification arrived,
    /// or stop.
    var demand: WakeSignal { ledger.claimerWake }

    init(context: RunContext<C>, ledger: RowLedger) {
        self.context = context
        self.ledger = ledger
        let configuration = context.configuration
        self.state = Mutex(
            State(
                sizer: ClaimSizer(
                    minimum: configuration.concurrency,
                    maximum: configuration.effectiveClaimBatch,
                    lookahead: .seconds(1)
                )
            )
        )
    }

    struct AsyncIterator: AsyncIteratorProtocol {
        let rows: ClaimedRows
        mutating func next() async -> LeasedItem? { await rows.next() }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(rows: self) }

    /// Claimed rows no worker task has started.
    var buffered: Int { state.withLock { $0.buffered } }

    /// The next row; nil when the run is over (drained, stopping) or the task is cancelled. Any number of
    /// consumers.
    private func next() async -> LeasedItem? {
        let now = clock.now
        let step = state.withLock { state -> NextStep in
            if state.stopped || Task.isCancelled { return .end }
            if let item = handOut(from: &state, now: now) {
                return .row(item, refill: state.buffered < state.sizer.lowWatermark(at: now))
            }
            if state.exhausted { return .end }
            state.nextConsumerID += 1
            return .wait(state.nextConsumerID)
        }
        switch step {
        case .row(let item, let refill):
            if refill { demand.fire() }
            return item
        case .end:
            return nil
        case .wait(let id):
            demand.fire()
            let item = await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<LeasedItem?, Never>) in
                    // Rows may have arrived since the buffer was found empty: take one rather than wait.
                    let now = clock.now
                    let answer = state.withLock { state -> LeasedItem?? in
                        if state.stopped || state.exhausted || Task.isCancelled { return .some(nil) }
                        if let item = handOut(from: &state, now: now) { return .some(item) }
                        state.consumers.append((id, continuation))
                        return nil
                    }
                    if let answer { continuation.resume(returning: answer) }
                }
            } onCancel: {
                let waiting = state.withLock { state -> CheckedContinuation<LeasedItem?, Never>? in
                    guard let index = state.consumers.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.consumers.remove(at: index).continuation
                }
                waiting?.resume(returning: nil)
            }
            return item
        }
    }

    /// Takes the next buffered row for a worker task, counting it started (claim sizing) and handed out
    /// (``RowLedger``) under the rows' lock.
    private func handOut(from state: inout State, now: C.Instant) -> LeasedItem? {
        guard let item = state.popFirst() else { return nil }
        state.sizer.recordStarted(1, at: now)
        ledger.handedOut(1)
        return item
    }

    /// Ends the sequence: the consumers get nil. Rows still buffered stay for ``takeUnstarted()``.
    func stop() {
        let waiting = state.withLock { state in
            state.stopped = true
            return state.takeConsumers()
        }
        for continuation in waiting { continuation.resume(returning: nil) }
        demand.fire()
    }

    /// Removes and returns the claimed rows no worker task has started.
    func takeUnstarted() -> [LeasedItem] {
        state.withLock { state in
            defer {
                state.buffer = []
                state.head = 0
            }
            return Array(state.buffer[state.head...])
        }
    }

    /// Claims rows as they are needed until the queue is drained (drain mode) or ``stop()``. Throws when the
    /// store gives up (the database stayed away past the outage limit).
    func runClaimer() async throws {
        var lastDeadRunCheck: C.Instant?
        while true {
            try Task.checkCancellation()
            let now = clock.now
            let (stopped, exhausted, buffered, target, low, waiting) = state.withLock { state in
                (
                    state.stopped, state.exhausted, state.buffered, state.sizer.target(at: now),
                    state.sizer.lowWatermark(at: now), !state.consumers.isEmpty
                )
            }
            if stopped || exhausted { return }
            if buffered >= low && !waiting {
                await demand.wait(timeout: configuration.pollInterval, clock: clock)
                continue
            }
            // Backpressure: rows whose results wait for the writer count against what may be held, so a
            // writer slower than the API (a slow database) slows the claims instead of piling up leased rows.
            // A writer that keeps up holds two batches (one being written, the next filling meanwhile): with
            // one, claims were cut while the writer kept up, and the worker tasks ran out of rows.
            let held = buffered + ledger.outstanding
            let limit = Swift.min(
                target - buffered,
                target + configuration.concurrency + 2 * configuration.writeBatch - held
            )
            guard limit > 0 else {
                await demand.wait(timeout: configuration.pollInterval, clock: clock)
                continue
            }
            let claimed = try await store.claim(limit: limit)
            context.accounting.claimed(claimed.items.count, failed: claimed.failed)
            if claimed.failed > 0 {
                logger.warning(
                    "rows taken over too often were marked failed",
                    metadata: ["rows": "\(claimed.failed)", "max_takeovers": "\(configuration.maxTakeovers)"]
                )
            }
            if !claimed.items.isEmpty {
                deliver(claimed.items)
                continue
            }
            try await waitForWork(lastDeadRunCheck: &lastDeadRunCheck)
        }
    }

    /// Nothing was available: decide whether the drain is over, else wait for a retry to come due, a result
    /// to be written, a notification or the poll interval. Rows held by other runs are checked for dead
    /// owners (at most once a second), so that a dead worker's rows are taken over at once.
    private func waitForWork(lastDeadRunCheck: inout C.Instant?) async throws {
        let settledEverything = ledger.outstanding == 0 && buffered == 0
        guard configuration.follow || settledEverything else {
            await demand.wait(timeout: configuration.pollInterval, clock: clock)
            return
        }
        let work = try await store.nextWork()
        var next = work?.delay
        if next != nil, lastDeadRunCheck.map({ $0.duration(to: clock.now) >= .seconds(1) }) ?? true {
            lastDeadRunCheck = clock.now
            let abandoned = try await store.takeOverDeadRuns()
            WorkerLog.abandoned(abandoned, logger: logger)
            if abandoned.rowsFreed > 0 { next = .zero }
        }
        if next == nil && settledEverything && !configuration.follow {
            let waiting = state.withLock { state in
                state.exhausted = true
                return state.takeConsumers()
            }
            for continuation in waiting { continuation.resume(returning: nil) }
            logger.debug("queue drained")
            return
        }
        if next == .zero { return }
        // Draining, with nothing of its own left, while other runs still hold rows: look again each second
        // (as often as for dead owners) rather than each poll interval, so that this run ends about when
        // they are written instead of up to a poll interval later (nothing notifies a write-back). Rows
        // that are only waiting for their retry time are waited for as before.
        let drainedLook = !configuration.follow && settledEverything && work?.running == true
        await demand.wait(
            timeout: Swift.min(
                next ?? configuration.pollInterval,
                drainedLook
                    ? Swift.min(Self.drainedLookInterval, configuration.pollInterval) : configuration.pollInterval
            ),
            clock: clock
        )
    }

    /// How often a draining run with no rows of its own looks whether other runs' rows are settled.
    static var drainedLookInterval: Duration { .seconds(1) }

    private func deliver(_ items: [LeasedItem]) {
        let now = clock.now
        let handed = state.withLock { state -> [(CheckedContinuation<LeasedItem?, Never>, LeasedItem)] in
            let count = Swift.min(state.consumers.count, items.count)
            let handed = zip(state.consumers.prefix(count).map(\.continuation), items.prefix(count))
            state.consumers.removeFirst(count)
            if count > 0 {
                state.sizer.recordStarted(count, at: now)
                ledger.handedOut(count)
            }
            state.buffer.append(contentsOf: items.dropFirst(count))
            return Array(handed)
        }
        for (continuation, item) in handed { continuation.resume(returning: item) }
    }
}

/// What ``ClaimedRows``'s consumer does next.
private enum NextStep {
    case row(LeasedItem, refill: Bool)
    case end
    case wait(UInt64)
}

/// Rows handed to worker tasks (counted under the rows' lock as they leave the buffer, so a row is always
/// either buffered or outstanding) and rows whose result is written: the claimer ends a drain only when the
/// two agree, and holds back claims while too many results wait to be written. Shared by the rows (handed
/// out) and the writer (settled), so neither refers to the other; a settlement wakes the claimer, which may
/// be waiting for the last results to end the drain.
final class RowLedger: Sendable {
    private let counts = Mutex((handedOut: 0, settled: 0))
    /// The claimer's wake-up.
    let claimerWake = WakeSignal()

    func handedOut(_ count: Int) { counts.withLock { $0.handedOut += count } }

    func settled(_ count: Int) {
        counts.withLock { $0.settled += count }
        claimerWake.fire()
    }

    /// Rows handed out whose result is not written yet.
    var outstanding: Int { counts.withLock { $0.handedOut - $0.settled } }
}
