import EnrichQueue
import Logging

/// Hands claimed rows to the worker tasks and claims more ahead of demand.
///
/// The claimer (``runClaimer()``) keeps about one second of work leased (what the worker tasks take per
/// second, at least the concurrency, at most the claim batch), refilling when half of it is left: a worker
/// task almost never waits for the database, memory stays flat however long the queue is, and a worker that
/// dies leaves few rows behind. In drain mode it ends the run when the queue is settled: no row handed out
/// is still unwritten, no row is `pending` (rows waiting for a retry are waited for) and none is `running`
/// under another live worker (a dead worker's rows are taken over as soon as its run is found dead). In
/// follow mode it waits for new work.
actor ItemSource {
    private let queue: Queue
    private let jobRuns: JobRuns
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
    /// Worker tasks waiting for a row (a cancelled task leaves at once with nil).
    private nonisolated let consumers = Waiters<LeasedItem>()
    private var stopped = false
    private var exhausted = false
    /// Rows handed to a worker task whose result is not yet written back.
    private var outstanding = 0
    private var sizer: ClaimSizer<ContinuousClock.Instant>
    private var lastDeadRunCheck: ContinuousClock.Instant?

    init(
        queue: Queue,
        jobRuns: JobRuns,
        owner: String,
        runID: Int64,
        configuration: WorkerConfiguration,
        statistics: RunStatistics,
        database: DatabaseGuard,
        logger: Logger
    ) {
        self.queue = queue
        self.jobRuns = jobRuns
        self.owner = owner
        self.runID = runID
        self.configuration = configuration
        self.statistics = statistics
        self.database = database
        self.logger = logger
        self.sizer = ClaimSizer(
            minimum: configuration.concurrency,
            maximum: configuration.effectiveClaimBatch,
            lookahead: .seconds(1)
        )
    }

    private var buffered: Int { buffer.count - head }

    /// Rows this run holds: handed out and not yet written, or claimed and not yet started.
    var held: Int { outstanding + buffered }

    /// The next row to call the API for; nil when the run is over (drained or stopping) or the task is
    /// cancelled.
    func next() async -> LeasedItem? {
        if stopped || Task.isCancelled { return nil }
        if let item = popFirst() {
            handOut()
            return item
        }
        if exhausted { return nil }
        if consumers.isEmpty { demand.fire() }
        return await consumers.wait()
    }

    private func handOut() {
        outstanding += 1
        let now = ContinuousClock.now
        sizer.recordStarted(1, at: now)
        if buffered < sizer.lowWatermark(at: now) { demand.fire() }
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
            let now = ContinuousClock.now
            let target = sizer.target(at: now)
            if buffered >= sizer.lowWatermark(at: now) && consumers.isEmpty {
                await demand.wait(timeout: configuration.pollInterval)
                continue
            }
            let limit = target - buffered
            guard limit > 0 else {
                await demand.wait(timeout: configuration.pollInterval)
                continue
            }
            let (queue, owner, runID, configuration) = (self.queue, self.owner, self.runID, self.configuration)
            let claimed = try await database.run("claim rows") {
                try await queue.claim(
                    owner: owner,
                    limit: limit,
                    lease: configuration.lease,
                    runID: runID,
                    maxAttempts: configuration.maxAttempts,
                    maxTakeovers: configuration.maxTakeovers
                )
            }
            let (items, failed) = (claimed.items, claimed.failed)
            if failed > 0 {
                // Taken over from stalled workers too often: failed by this run's claim.
                statistics.recordWritten(done: 0, failed: failed, retried: 0)
                logger.warning(
                    "rows taken over too often were marked failed",
                    metadata: ["rows": "\(failed)", "max_takeovers": "\(configuration.maxTakeovers)"]
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
    /// result to be written, a notification or the poll interval. Rows held by other runs are checked for
    /// dead owners (at most once a second), so that a dead worker's rows are taken over at once.
    private func waitForWork() async throws {
        let settledEverything = outstanding == 0 && buffered == 0
        if configuration.follow || settledEverything {
            let queue = self.queue
            var next = try await database.run("look for pending rows") { try await queue.nextWorkDelay() }
            if next != nil, try await freeRowsOfDeadRuns() {
                next = .zero
            }
            if next == nil && settledEverything && !configuration.follow {
                exhausted = true
                resumeConsumers()
                logger.debug("queue drained")
                return
            }
            if next == .zero { return }
            await demand.wait(timeout: min(next ?? configuration.pollInterval, configuration.pollInterval))
        } else {
            await demand.wait(timeout: configuration.pollInterval)
        }
    }

    /// Marks dead runs abandoned and frees their rows (at most once a second); true when rows were freed.
    private func freeRowsOfDeadRuns() async throws -> Bool {
        let now = ContinuousClock.now
        if let last = lastDeadRunCheck, last.duration(to: now) < .seconds(1) { return false }
        lastDeadRunCheck = now
        let (jobRuns, runID, configuration, runner) = (self.jobRuns, self.runID, self.configuration, self.owner)
        let abandoned = try await database.run("take over the rows of dead runs") {
            try await jobRuns.abandonDeadRuns(
                excluding: runID,
                staleAfter: configuration.effectiveStaleAfter,
                markedBy: runner,
                maxTakeovers: configuration.maxTakeovers
            )
        }
        WorkerLog.abandoned(abandoned, logger: logger)
        return abandoned.rowsFreed > 0
    }

    private func deliver(_ items: [LeasedItem]) {
        var rest = items[...]
        while let item = rest.first, consumers.resumeFirst(with: item) {
            rest.removeFirst()
            outstanding += 1
            sizer.recordStarted(1, at: .now)
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
        consumers.resumeAll(with: nil)
    }
}

/// How many rows to keep claimed: what the worker tasks start in `lookahead`, at least `minimum` (the
/// concurrency, so that every task has a row) and at most `maximum` (the claim batch). Pure: the caller
/// passes the time.
struct ClaimSizer<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    let minimum: Int
    let maximum: Int
    let lookahead: Duration
    /// Rows started in the current and the previous measuring window.
    private var window: (start: Instant, count: Int)?
    private var previousRate: Double = 0

    init(minimum: Int, maximum: Int, lookahead: Duration) {
        self.minimum = max(1, min(minimum, maximum))
        self.maximum = maximum
        self.lookahead = lookahead
    }

    mutating func recordStarted(_ count: Int, at now: Instant) {
        guard var current = window else {
            window = (now, count)
            return
        }
        let elapsed = current.start.duration(to: now)
        if elapsed >= lookahead {
            previousRate = Double(current.count) / seconds(elapsed)
            current = (now, 0)
        }
        current.count += count
        window = current
    }

    /// Rows to hold claimed now.
    func target(at now: Instant) -> Int {
        var rate = previousRate
        if let window {
            let elapsed = window.start.duration(to: now)
            if elapsed >= .milliseconds(250) { rate = max(rate, Double(window.count) / seconds(elapsed)) }
        }
        let wanted = Int((rate * seconds(lookahead)).rounded(.up))
        return min(maximum, max(minimum, wanted))
    }

    /// Claim again when fewer rows than this are left: half the target.
    func lowWatermark(at now: Instant) -> Int { max(1, target(at: now) / 2) }

    private func seconds(_ duration: Duration) -> Double {
        let (whole, fraction) = duration.components
        return Double(whole) + Double(fraction) / 1e18
    }
}
