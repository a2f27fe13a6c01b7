import EnrichQueue
import Logging

/// Hands claimed rows to the worker tasks and claims more ahead of demand.
///
/// The claimer (``runClaimer()``) keeps between the low watermark and one claim batch of rows leased, so a
/// worker task almost never waits for the database, and memory stays flat however long the queue is. In
/// drain mode it ends the run when the queue is settled: no row handed out is still unwritten, no row is
/// `pending` (rows waiting for a retry are waited for) and none is `running` under another worker's lease
/// (a crashed worker's rows are reclaimed when their lease expires). In follow mode it waits for new work.
actor ItemSource {
    private let queue: Queue
    private let owner: String
    private let runID: Int64
    private let configuration: WorkerConfiguration
    private let statistics: RunStatistics
    private let database: DatabaseGuard
    private let logger: Logger
    /// Wakes the claimer: rows were taken, results were written, a notification arrived, or stop.
    nonisolated let demand = WakeSignal()

    private var buffer: [LeasedItem] = []
    private var head = 0
    private var consumers: [CheckedContinuation<LeasedItem?, Never>] = []
    private var stopped = false
    private var exhausted = false
    /// Rows handed to a worker task whose result is not yet written back.
    private var outstanding = 0

    init(
        queue: Queue,
        owner: String,
        runID: Int64,
        configuration: WorkerConfiguration,
        statistics: RunStatistics,
        database: DatabaseGuard,
        logger: Logger
    ) {
        self.queue = queue
        self.owner = owner
        self.runID = runID
        self.configuration = configuration
        self.statistics = statistics
        self.database = database
        self.logger = logger
    }

    private var buffered: Int { buffer.count - head }

    /// The next row to call the API for; nil when the run is over (drained or stopping).
    func next() async -> LeasedItem? {
        if stopped { return nil }
        if let item = popFirst() {
            outstanding += 1
            if buffered < configuration.lowWatermark { demand.fire() }
            return item
        }
        if exhausted { return nil }
        if consumers.isEmpty { demand.fire() }
        return await withCheckedContinuation { consumers.append($0) }
    }

    /// `count` rows handed out earlier now have their result written (or released).
    func settled(_ count: Int) {
        outstanding -= count
        demand.fire()
    }

    /// Stops handing out rows; waiting worker tasks get nil. Rows still buffered stay for ``takeUnstarted()``.
    func stop() {
        guard !stopped else { return }
        stopped = true
        resumeConsumers()
        demand.fire()
    }

    /// Removes and returns the claimed rows no worker task has started.
    func takeUnstarted() -> [LeasedItem] {
        let rest = Array(buffer[head...])
        buffer = []
        head = 0
        return rest
    }

    /// Claims rows as they are needed until the queue is drained (drain mode) or ``stop()``.
    /// Throws ``WorkerError`` when the database stays unreachable past the outage limit.
    func runClaimer() async throws {
        while !stopped && !exhausted {
            try Task.checkCancellation()
            if buffered >= configuration.lowWatermark && consumers.isEmpty {
                await demand.wait(timeout: configuration.pollInterval)
                continue
            }
            let limit = configuration.effectiveClaimBatch - buffered
            guard limit > 0 else {
                await demand.wait(timeout: configuration.pollInterval)
                continue
            }
            let (queue, owner, runID, configuration) = (self.queue, self.owner, self.runID, self.configuration)
            let (items, failed) = try await database.run("claim rows") {
                try await queue.claimCounting(
                    owner: owner,
                    limit: limit,
                    lease: configuration.lease,
                    runID: runID,
                    maxAttempts: configuration.maxAttempts
                )
            }
            if failed > 0 {
                // Reclaimed from a dead worker with no attempt left: failed by this run's claim.
                statistics.recordWritten(done: 0, failed: failed, retried: 0)
                logger.warning(
                    "rows reclaimed after their last attempt were marked failed",
                    metadata: ["rows": "\(failed)"]
                )
            }
            if !items.isEmpty {
                statistics.update { $0.counters.claimed += Int64(items.count) }
                deliver(items)
                continue
            }
            if stopped { break }
            try await waitForWork()
        }
    }

    /// Nothing was available: decide whether the drain is over, else wait for a retry to come due, a
    /// result to be written, a notification or the poll interval.
    private func waitForWork() async throws {
        let settledEverything = outstanding == 0 && buffered == 0
        if configuration.follow || settledEverything {
            let queue = self.queue
            let next = try await database.run("look for pending rows") { try await queue.nextWorkDelay() }
            if next == nil && settledEverything && !configuration.follow {
                exhausted = true
                resumeConsumers()
                logger.debug("queue drained")
                return
            }
            await demand.wait(timeout: min(next ?? configuration.pollInterval, configuration.pollInterval))
        } else {
            await demand.wait(timeout: configuration.pollInterval)
        }
    }

    private func deliver(_ items: [LeasedItem]) {
        var rest = items[...]
        while !consumers.isEmpty, let item = rest.popFirst() {
            outstanding += 1
            consumers.removeFirst().resume(returning: item)
        }
        buffer.append(contentsOf: rest)
    }

    private func popFirst() -> LeasedItem? {
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

    private func resumeConsumers() {
        let waiting = consumers
        consumers = []
        for consumer in waiting { consumer.resume(returning: nil) }
    }
}
