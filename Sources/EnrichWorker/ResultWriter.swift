import EnrichQueue
import Logging
import Synchronization

/// Results on their way back to the database. A worker task adds its row's result (a lock, no actor hop);
/// the writer takes them in batches.
final class ResultBuffer: Sendable {
    private struct State {
        var results: [ItemResult] = []
        var closed = false
        /// The writer waits for a first result (it found the buffer empty).
        var writerIdle = false
    }

    private let state = Mutex(State())
    private let batchSize: Int
    /// Fired when a result arrives while the writer is idle (``waitForResults(timeout:clock:)``), when a batch
    /// is full, and on ``close()``. Not on every first result: a wake-up left pending while the writer was
    /// busy would end its next batching delay at once and cut batches to a few rows.
    let arrived = WakeSignal()

    init(batchSize: Int) { self.batchSize = batchSize }

    func add(_ result: ItemResult) {
        let wake = state.withLock { state in
            state.results.append(result)
            defer { state.writerIdle = false }
            return state.writerIdle || state.results.count == batchSize
        }
        if wake { arrived.fire() }
    }

    /// Waits until a result arrives, the buffer is closed, or `timeout`; at once when results wait.
    func waitForResults<C: Clock>(timeout: Duration, clock: C) async where C.Duration == Duration {
        let idle = state.withLock { state in
            state.writerIdle = state.results.isEmpty && !state.closed
            return state.writerIdle
        }
        if idle { await arrived.wait(timeout: timeout, clock: clock) }
    }

    /// No more results will come: the writer ends once it has written what is here.
    func close() {
        state.withLock { $0.closed = true }
        arrived.fire()
    }

    var status: (count: Int, closed: Bool) { state.withLock { ($0.results.count, $0.closed) } }

    /// Takes up to `limit` results, oldest first.
    func take(_ limit: Int) -> [ItemResult] {
        state.withLock { state in
            let taken = Array(state.results.prefix(limit))
            state.results.removeFirst(taken.count)
            return taken
        }
    }

    /// Puts results that could not be written back in front of the others.
    func putBack(_ results: [ItemResult]) {
        state.withLock { $0.results.insert(contentsOf: results, at: 0) }
    }
}

/// Writes results back in batches: when ``WorkerConfiguration/writeBatch`` results wait, or
/// ``WorkerConfiguration/writeDelay`` after the first one arrived, so a thousand calls per second cost a
/// few dozen statements, not a thousand. Each batch is one statement: all of it is written or none.
struct ResultWriter<C: Clock>: Sendable where C.Duration == Duration {
    let context: RunContext<C>
    let buffer: ResultBuffer
    let ledger: RowLedger
    private var store: any RunStore { context.store }
    private var accounting: RunAccounting { context.accounting }
    private var configuration: WorkerConfiguration { context.configuration }
    private var clock: C { context.clock }
    private var logger: Logger { context.logger }

    /// Writes batches until the buffer is closed and empty. Throws when the store gives up (the database
    /// stayed away past the outage limit); what could not be written stays in the buffer.
    func run() async throws {
        while true {
            let (count, closed) = buffer.status
            if count == 0 {
                if closed { return }
                await buffer.waitForResults(timeout: .seconds(1), clock: clock)
                continue
            }
            if count < configuration.writeBatch && !closed {
                await buffer.arrived.wait(timeout: configuration.writeDelay, clock: clock)
            }
            try await flush()
        }
    }

    /// One last attempt to write what is still waiting after ``run()`` gave up; what stays unwritten is
    /// left to the rows' leases (or to the next run, which takes the rows of a dead or ended run over).
    func flushRemaining() async {
        while buffer.status.count > 0 {
            do {
                try await flush()
            } catch {
                logger.error(
                    "results left unwritten; their rows go to the next run",
                    metadata: ["rows": "\(buffer.status.count)", "error": "\(error)"]
                )
                return
            }
        }
    }

    /// Hands rows claimed but never started back to `pending`, without an attempt spent.
    func releaseUnstarted(_ items: [LeasedItem]) async {
        guard !items.isEmpty else { return }
        do {
            let outcome = try await store.write(WriteBackBatch(releases: items.map { Release(item: $0, after: .zero) }))
            accounting.wrote(outcome)
        } catch {
            logger.error(
                "could not release the rows claimed but not started; the next run takes them over",
                metadata: ["rows": "\(items.count)", "error": "\(error)"]
            )
        }
    }

    private func flush() async throws {
        let results = buffer.take(configuration.writeBatch)
        guard !results.isEmpty else { return }
        var batch = WriteBackBatch()
        for result in results {
            switch result {
            case .done(let completion): batch.completions.append(completion)
            case .failed(let failure): batch.failures.append(failure)
            case .released(let release): batch.releases.append(release)
            }
        }
        let outcome: WriteBackOutcome
        do {
            outcome = try await store.write(batch)
        } catch {
            buffer.putBack(results)
            throw error
        }
        accounting.wrote(outcome)
        ledger.settled(results.count)
        if !outcome.staleIDs.isEmpty {
            logger.warning(
                "results discarded: their rows were taken over by another run after the lease expired",
                metadata: ["rows": "\(outcome.staleIDs.count)"]
            )
        }
    }
}
