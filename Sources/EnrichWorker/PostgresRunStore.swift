import EnrichQueue
import Logging

/// The run's store in PostgreSQL: the queue and job runs tables, the run's liveness lock, and one outage
/// budget (``DatabaseGuard``) that bounds and retries every statement.
struct PostgresRunStore: RunStore {
    let database: Database
    let queue: Queue
    let jobRuns: JobRuns
    let liveness: RunLiveness
    let guardian: DatabaseGuard
    let owner: String
    let configuration: WorkerConfiguration

    private var runID: Int64 { liveness.runID }

    init(
        database: Database,
        liveness: RunLiveness,
        owner: String,
        configuration: WorkerConfiguration,
        target: WriteBackTarget? = nil,
        logger: Logger
    ) {
        self.database = database
        self.queue = Queue(database: database, target: target)
        self.jobRuns = JobRuns(database: database)
        self.liveness = liveness
        self.guardian = DatabaseGuard(limit: configuration.databaseOutageLimit, database: database, logger: logger)
        self.owner = owner
        self.configuration = configuration
    }

    func claim(limit: Int) async throws -> Claimed {
        let (queue, owner, runID, configuration) = (queue, owner, runID, configuration)
        return try await guardian.run("claim rows") {
            try await queue.claim(
                owner: owner,
                limit: limit,
                lease: configuration.lease,
                runID: runID,
                maxAttempts: configuration.maxAttempts,
                maxTakeovers: configuration.maxTakeovers
            )
        }
    }

    func write(_ batch: WriteBackBatch) async throws -> WriteBackOutcome {
        let (queue, owner) = (queue, owner)
        return try await guardian.run("write back results") { try await queue.writeBack(batch, owner: owner) }
    }

    func nextWork() async throws -> Queue.NextWork? {
        let queue = queue
        return try await guardian.run("look for pending rows") { try await queue.nextWork() }
    }

    func takeOverDeadRuns() async throws -> JobRuns.Abandoned {
        let (jobRuns, runID, owner, configuration) = (jobRuns, runID, owner, configuration)
        return try await guardian.run("take over the rows of dead runs") {
            try await jobRuns.abandonDeadRuns(
                excluding: runID,
                staleAfter: configuration.effectiveStaleAfter,
                markedBy: owner,
                maxTakeovers: configuration.maxTakeovers
            )
        }
    }

    func extendLeases() async throws {
        let (queue, owner, lease) = (queue, owner, configuration.lease)
        _ = try await guardian.run("extend leases") { try await queue.extendLeases(owner: owner, lease: lease) }
    }

    func counts() async throws -> QueueCounts {
        let queue = queue
        return try await guardian.run("count rows") { try await queue.counts() }
    }

    func fleetStatus() async -> FleetStatus? {
        // Best effort, outside the outage budget: a gauge is not worth retrying for.
        guard !isFailing else { return nil }
        return try? await FleetStatus.read(database)
    }

    func compactCounts() async throws {
        let queue = queue
        try await guardian.run("compact counters") { try await queue.compactCounts() }
    }

    func renewLiveness() async throws -> Bool {
        let liveness = liveness
        return try await guardian.run("renew the liveness lock") { try await liveness.renew() }
    }

    func recordHeartbeat(_ heartbeat: HeartbeatRecord) async throws -> Bool {
        let (jobRuns, runID) = (jobRuns, runID)
        return try await guardian.run("heartbeat") {
            try await jobRuns.heartbeat(
                id: runID,
                counters: heartbeat.counters,
                totalItems: heartbeat.totalItems,
                stalledFor: heartbeat.stalledFor
            )
        }
    }

    func recordEnd(_ end: RunEnd, within time: Duration) async throws {
        // Not through the outage budget: the end is recorded even after the budget gave up, while time is left.
        let deadline = ContinuousClock.now + time
        var attempt = 0
        while true {
            attempt += 1
            // While the database is failing, short tries until the time is up: it may come back.
            let tryUntil = guardian.isFailing ? min(deadline, .now + .milliseconds(500)) : deadline
            do {
                try await Database.$deadline.withValue(tryUntil) {
                    try await jobRuns.finish(
                        id: runID,
                        state: end.state,
                        counters: end.counters,
                        lastError: end.lastError
                    )
                }
                return
            } catch {
                let retryAt = ContinuousClock.now + .milliseconds(250) * attempt
                if retryAt >= deadline { throw error }
                try await Task.sleep(until: retryAt, clock: .continuous)
            }
        }
    }

    func listenForNewWork(_ wake: @escaping @Sendable () -> Void) async throws {
        try await queue.listenForNewWork(wake)
    }

    var isFailing: Bool { guardian.isFailing }

    func limitStatements(to time: Duration) { guardian.limit(to: .now + time) }
}
