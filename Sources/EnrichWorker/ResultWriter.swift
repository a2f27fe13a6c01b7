import EnrichQueue
import Logging

/// What became of one claimed row.
enum ItemResult: Sendable {
    /// The API answered: write the commerce context back and mark the row done.
    case done(Completion)
    /// The call failed: permanently (400) or for a later attempt (5xx, timeout, ...).
    case failed(Failure)
    /// Not the row's fault (429 bound, shutdown): back to pending without spending the attempt.
    case released(LeasedItem, after: Duration)
}

/// Batches results and writes them back: a flush happens when ``WorkerConfiguration/writeBatch`` results
/// are waiting or ``WorkerConfiguration/writeDelay`` after the first one arrived, so a thousand calls per
/// second cost a few dozen statements, not a thousand.
actor ResultWriter {
    private let queue: Queue
    private let owner: String
    private let configuration: WorkerConfiguration
    private let statistics: RunStatistics
    private let database: DatabaseGuard
    private let source: ItemSource
    private let logger: Logger

    private var completions: [Completion] = []
    private var failures: [Failure] = []
    private var releases: [(item: LeasedItem, after: Duration, handedOut: Bool)] = []
    private var finishing = false
    private nonisolated let arrived = WakeSignal()
    private nonisolated let full = WakeSignal()

    init(
        queue: Queue,
        owner: String,
        configuration: WorkerConfiguration,
        statistics: RunStatistics,
        database: DatabaseGuard,
        source: ItemSource,
        logger: Logger
    ) {
        self.queue = queue
        self.owner = owner
        self.configuration = configuration
        self.statistics = statistics
        self.database = database
        self.source = source
        self.logger = logger
    }

    private var waiting: Int { completions.count + failures.count + releases.count }

    func submit(_ result: ItemResult) {
        switch result {
        case .done(let completion): completions.append(completion)
        case .failed(let failure): failures.append(failure)
        case .released(let item, let delay): releases.append((item, delay, true))
        }
        let count = waiting
        if count == 1 { arrived.fire() }
        if count >= configuration.writeBatch { full.fire() }
    }

    /// Rows claimed but never started: handed back without counting an attempt.
    func release(_ items: [LeasedItem]) {
        for item in items { releases.append((item, .zero, false)) }
        if !items.isEmpty { arrived.fire() }
    }

    /// Ends ``run()`` once everything submitted so far is written.
    func finish() {
        finishing = true
        arrived.fire()
        full.fire()
    }

    /// Writes batches until ``finish()``; throws ``WorkerError`` if the database stays away too long (what
    /// could not be written is kept for ``flushRemaining()``).
    func run() async throws {
        while !Task.isCancelled {
            if waiting == 0 {
                if finishing { return }
                await arrived.wait(timeout: .seconds(1))
                continue
            }
            if waiting < configuration.writeBatch && !finishing {
                await full.wait(timeout: configuration.writeDelay)
            }
            try await flush()
        }
    }

    /// One last attempt to write what is still waiting after ``run()`` ended early; logs what stays unwritten
    /// (those rows are reclaimed after their lease expires).
    func flushRemaining() async {
        guard waiting > 0 else { return }
        do {
            try await flush()
        } catch {
            logger.error(
                "results left unwritten; their rows are retried after the lease expires",
                metadata: ["rows": "\(waiting)", "error": "\(error)"]
            )
        }
    }

    private func flush() async throws {
        let completions = self.completions
        let failures = self.failures
        var releases = self.releases.sorted { $0.after < $1.after }[...]
        let handedOut = releases.count(where: \.handedOut)
        self.completions = []
        self.failures = []
        self.releases = []
        let (queue, owner) = (self.queue, self.owner)
        var completed = WriteOutcome()
        var failed = WriteOutcome()
        var released = WriteOutcome()
        var step = 0
        do {
            completed = try await database.run("write back results") {
                try await queue.complete(completions, owner: owner)
            }
            step = 1
            failed = try await database.run("record failures") { try await queue.fail(failures, owner: owner) }
            step = 2
            while let delay = releases.first?.after {
                let group = releases.prefix { $0.after == delay }
                let outcome = try await database.run("release rows") {
                    try await queue.release(group.map(\.item), owner: owner, after: delay)
                }
                released.written += outcome.written
                released.staleIDs += outcome.staleIDs
                releases = releases.dropFirst(group.count)
            }
        } catch {
            // Keep what was not written, in front of anything submitted meanwhile; count what was.
            if step < 1 { self.completions = completions + self.completions }
            if step < 2 { self.failures = failures + self.failures }
            self.releases = Array(releases) + self.releases
            account(completed: completed, failed: failed, released: released)
            let written =
                (step >= 1 ? completions.count : 0) + (step >= 2 ? failures.count : 0)
                + handedOut - releases.count(where: \.handedOut)
            if written > 0 { await source.settled(written) }
            throw error
        }
        account(completed: completed, failed: failed, released: released)
        await source.settled(completions.count + failures.count + handedOut)
    }

    /// Adds what a flush wrote to the run's counters and metrics.
    private func account(completed: WriteOutcome, failed: WriteOutcome, released: WriteOutcome) {
        let stale = completed.staleIDs.count + failed.staleIDs.count + released.staleIDs.count
        statistics.recordWritten(
            done: completed.written,
            failed: failed.failedPermanently,
            retried: failed.written - failed.failedPermanently
        )
        statistics.update {
            $0.released += Int64(released.written)
            $0.stale += Int64(stale)
        }
        if stale > 0 {
            logger.warning(
                "results discarded: their rows were reclaimed by another worker after the lease expired",
                metadata: ["rows": "\(stale)"]
            )
        }
    }
}
