import EnrichFleet
import EnrichMetrics
import EnrichQueue
import EnrichStatus
import EnrichThrottle
import EnrichToken
import EnrichWorker
import Logging
import NymbleAPI
import Prometheus
import ServiceLifecycle
import Synchronization

/// One `enrich run`, from its plan: takes the job's lock (a `--job` run: a second invocation gives up at
/// once), enqueues the job's source (a failure is recorded as a failed run, so that monitoring sees the
/// broken night), then runs the ``Worker`` under a `ServiceGroup` (SIGINT/SIGTERM stop it gracefully),
/// beside the metrics endpoint and the lock's watchdog, and reports how the run ended.
public struct JobRunner: Sendable {
    public let plan: RunPlan
    public let logger: Logger
    public var onProgress: (@Sendable (WorkerProgress) -> Void)?
    public var onStopDeadline: (@Sendable (StuckStop) -> Void)?

    public init(
        plan: RunPlan,
        logger: Logger,
        onProgress: (@Sendable (WorkerProgress) -> Void)? = nil,
        onStopDeadline: (@Sendable (StuckStop) -> Void)? = nil
    ) {
        self.plan = plan
        self.logger = logger
        self.onProgress = onProgress
        self.onStopDeadline = onStopDeadline
    }

    public func run() async throws -> RunReport {
        try await Database.withDatabase(plan.database, logger: logger) { database in
            try await JobLock.withLock(jobName: plan.job?.name, database: database) { lock in
                if let target = plan.target {
                    try await recordingFailure(database) { try await target.validate(on: database) }
                }
                if let job = plan.job { try await enqueueSource(of: job, into: database) }
                return try await NymbleClient.withClient(configuration: plan.client, logger: logger) { client in
                    try await runWorker(database: database, client: client, lock: lock)
                }
            }
        }
    }

    private func enqueueSource(of job: JobDefinition, into database: Database) async throws {
        guard case .sql(let sql) = job.source else { return }
        try await recordingFailure(database) {
            let summary = try await Queue(database: database).enqueue(
                fromSQL: sql,
                maxAttempts: plan.worker.maxAttempts ?? 5,
                origin: "\(job.path): source.sql"
            )
            logger.info(
                "enqueued the job's source",
                metadata: [
                    "job": "\(job.name)", "read": "\(summary.read)", "new": "\(summary.inserted)",
                    "queued_again": "\(summary.requeued)", "already_queued": "\(summary.alreadyQueued)",
                ]
            )
        }
    }

    /// Runs a step before the run starts; when it fails, a failed run is recorded with the error, so that
    /// `status` and `status --check` see it.
    private func recordingFailure(_ database: Database, _ step: () async throws -> Void) async throws {
        do {
            try await step()
        } catch {
            // Best effort: the database itself may be what failed.
            let jobRuns = JobRuns(database: database)
            let start = JobRuns.Start(jobName: plan.worker.jobName, trigger: plan.worker.trigger, totalItems: nil)
            if let id = try? await jobRuns.start(start) {
                try? await jobRuns.finish(id: id, state: .failed, counters: RunCounters(), lastError: "\(error)")
            }
            throw error
        }
    }

    /// How long the end of the API session (a logout) may hold up the exit.
    static let endSessionDeadline = Duration.seconds(5)

    private func runWorker(database: Database, client: NymbleClient, lock: JobLock.Held?) async throws -> RunReport {
        let authenticator = Authenticator(client: client, credentials: plan.credentials)
        let tokens: any TokenProvider
        var sendBudget: (any SharedSendBudget)?
        if plan.fleet {
            let fleet = Fleet(database: database, baseURL: plan.client.normalizedBaseURL, credentials: plan.credentials)
            try await fleet.prepare()
            tokens = fleet.tokens(
                configuration: plan.token,
                databaseRetryLimit: plan.worker.databaseOutageLimit,
                staleAfter: plan.worker.staleAfter,
                // A login or refresh may take the connect and request timeouts: the lease outlasts both.
                loginLease: max(.seconds(30), plan.client.connectTimeout + plan.client.requestTimeout + .seconds(5)),
                clock: ContinuousClock(),
                logger: logger,
                authenticator: authenticator
            )
            sendBudget = fleet.budget()
        } else {
            tokens = SharedTokenStore(
                configuration: plan.token,
                clock: ContinuousClock(),
                logger: logger,
                authenticator: authenticator
            )
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var metrics = RunMetrics()
        if let (host, port) = plan.metrics {
            let registry = PrometheusCollectorRegistry()
            metrics = RunMetrics(factory: PrometheusMetricsFactory(registry: registry))
            let endpoint = MetricsEndpoint(registry: registry, host: host, port: port, logger: logger) { router in
                StatusPageRoutes.add(to: router, database: database)
            }
            services.append(.init(service: endpoint, failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        if let lock {
            let watchdog = LockWatchdog(lock: lock, interval: plan.worker.heartbeatInterval)
            services.append(.init(service: watchdog, failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        let worker = Worker(
            configuration: plan.worker,
            database: database,
            api: client,
            tokens: tokens,
            sendBudget: sendBudget,
            target: plan.target,
            logger: logger,
            metrics: metrics,
            onProgress: onProgress,
            onStopDeadline: onStopDeadline
        )
        let service = ReportingService(worker: worker)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)] + services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            await tokens.endSession(deadline: Self.endSessionDeadline)
            throw error
        }
        // The run is recorded as ended by now, so the fleet's last worker can tell that it is the last.
        await tokens.endSession(deadline: Self.endSessionDeadline)
        guard let report = service.report else { throw CancellationError() }
        return report
    }
}

/// Runs the worker as a service and keeps its report (a `Service` returns nothing).
private final class ReportingService: Service {
    private let worker: Worker
    private let result = Mutex<RunReport?>(nil)

    init(worker: Worker) { self.worker = worker }

    var report: RunReport? { result.withLock { $0 } }

    func run() async throws {
        let report = try await worker.execute()
        result.withLock { $0 = report }
    }
}

/// Checks every heartbeat that the job lock is still held; when its session is gone it fails, and the
/// service group shuts the worker down gracefully (the run ends `interrupted`, the command exits 2).
struct LockWatchdog: Service {
    let lock: JobLock.Held
    let interval: Duration

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                while true {
                    try await Task.sleep(for: interval)
                    try await lock.verify()
                }
            }
        } catch is CancellationError {
            return  // the run ended: nothing left to guard
        }
    }
}
