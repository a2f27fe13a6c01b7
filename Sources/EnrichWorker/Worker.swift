import EnrichQueue
import EnrichThrottle
import EnrichToken
import Foundation
import Logging
import NymbleAPI
import ServiceLifecycle

/// Progress of a running job, handed to ``Worker``'s progress callback every
/// ``WorkerConfiguration/progressInterval``.
public struct WorkerProgress: Sendable {
    public var runID: Int64
    public var statistics: RunStatistics.Snapshot
    /// Rows available when the run started (drain mode's denominator).
    public var totalItems: Int64?
    public var elapsed: Duration
    /// Rows written (done or failed for good) per second over the last interval.
    public var itemsPerSecond: Double
    /// The throttle's current send rate; nil while unlimited.
    public var sendRate: Double?
    public var logins: Int

    public init(
        runID: Int64,
        statistics: RunStatistics.Snapshot,
        totalItems: Int64?,
        elapsed: Duration,
        itemsPerSecond: Double,
        sendRate: Double?,
        logins: Int
    ) {
        self.runID = runID
        self.statistics = statistics
        self.totalItems = totalItems
        self.elapsed = elapsed
        self.itemsPerSecond = itemsPerSecond
        self.sendRate = sendRate
        self.logins = logins
    }
}

/// How a run ended.
public struct RunReport: Sendable {
    public var runID: Int64
    public var state: RunState
    public var statistics: RunStatistics.Snapshot
    public var logins: Int
    public var elapsed: Duration
    /// Why the run failed (state `failed`).
    public var error: (any Error)?
}

/// The pipeline: claim rows ahead of demand, call the API from a bounded task group sharing one token and
/// one throttle, and write the results back in batches, while the job runs row gets a heartbeat.
///
/// ```
/// ItemSource (claims) ──▶ N worker tasks (ItemProcessor: throttle → token → /access) ──▶ ResultWriter (batches)
/// ```
///
/// It is a `Service`: under a `ServiceGroup`, SIGINT/SIGTERM stop the claiming, in-flight calls get
/// ``WorkerConfiguration/shutdownGrace`` to finish, their results are written, unstarted rows are released
/// and the run is recorded `interrupted`.
public struct Worker: Service {
    public let configuration: WorkerConfiguration
    private let queue: Queue
    private let jobRuns: JobRuns
    private let client: NymbleClient
    private let tokens: any TokenProvider
    private let logger: Logger
    private let onProgress: (@Sendable (WorkerProgress) -> Void)?
    private let metrics: RunMetrics

    public init(
        configuration: WorkerConfiguration,
        database: Database,
        client: NymbleClient,
        tokens: any TokenProvider,
        logger: Logger,
        metrics: RunMetrics = RunMetrics(),
        onProgress: (@Sendable (WorkerProgress) -> Void)? = nil
    ) {
        self.metrics = metrics
        self.configuration = configuration
        self.queue = Queue(database: database)
        self.jobRuns = JobRuns(database: database)
        self.client = client
        self.tokens = tokens
        self.logger = logger
        self.onProgress = onProgress
    }

    public func run() async throws {
        let report = try await execute()
        if let error = report.error { throw error }
    }

    /// Performs one run and reports how it ended. Throws only when the run cannot start (bad settings, no
    /// database); failures after the start are in the report and in the job runs table.
    public func execute() async throws -> RunReport {
        try configuration.validate()
        let total = try await queue.availableCount()
        let runID = try await jobRuns.start(
            jobName: configuration.jobName,
            trigger: configuration.trigger,
            totalItems: total,
            settingsJSON: settingsJSON
        )
        RunLogContext.setProcessRun(runID)
        var logger = self.logger
        logger[metadataKey: "run_id"] = "\(runID)"
        let owner = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier):run-\(runID)"
        logger.info(
            "run started",
            metadata: [
                "job": "\(configuration.jobName)", "available_rows": "\(total)",
                "concurrency": "\(configuration.concurrency)",
                "rate": "\(configuration.rateLimit.map { "\($0)/s" } ?? "unknown (adaptive)")",
                "mode": "\(configuration.follow ? "follow" : "drain")",
            ]
        )

        let clock = ContinuousClock()
        let started = clock.now
        let statistics = RunStatistics(metrics: metrics)
        let control = RunControl()
        let database = DatabaseGuard(limit: configuration.databaseOutageLimit, logger: logger)
        let source = ItemSource(
            queue: queue,
            owner: owner,
            runID: runID,
            configuration: configuration,
            statistics: statistics,
            database: database,
            logger: logger
        )
        let writer = ResultWriter(
            queue: queue,
            owner: owner,
            configuration: configuration,
            statistics: statistics,
            database: database,
            source: source,
            logger: logger
        )
        let throttle = Throttle(
            configuration: .init(
                controller: .init(maximumRate: configuration.rateLimit),
                maximumPause: configuration.maximumPause
            ),
            clock: clock,
            logger: logger
        )
        let processor = ItemProcessor(
            client: client,
            tokens: tokens,
            throttle: throttle,
            configuration: configuration,
            statistics: statistics,
            logger: logger
        )
        let pipeline = Pipeline(
            configuration: configuration,
            runID: runID,
            owner: owner,
            total: total,
            queue: queue,
            jobRuns: jobRuns,
            tokens: tokens,
            source: source,
            writer: writer,
            throttle: throttle,
            processor: processor,
            statistics: statistics,
            control: control,
            database: database,
            logger: logger,
            onProgress: onProgress
        )
        await RunLogContext.$runID.withValue(runID) { await pipeline.run() }

        if Task.isCancelled { control.interrupt() }
        let logins = await tokens.loginCount()
        await metrics.refresh(queue: queue, logins: logins, rate: await throttle.currentRate())
        var counters = statistics.snapshot.counters
        counters.logins = Int64(logins)
        let fatal = control.fatalError
        let state: RunState = fatal != nil ? .failed : control.isInterrupted ? .interrupted : .succeeded
        await recordEnd(runID: runID, state: state, counters: counters, lastError: fatal.map { "\($0)" }, logger)
        let report = RunReport(
            runID: runID,
            state: state,
            statistics: statistics.snapshot,
            logins: logins,
            elapsed: started.duration(to: clock.now),
            error: fatal
        )
        logger.info(
            "run finished",
            metadata: [
                "state": "\(state.rawValue)", "done": "\(counters.succeeded)", "failed": "\(counters.failed)",
                "retried": "\(counters.retried)", "throttled": "\(counters.throttled)", "logins": "\(logins)",
                "seconds": "\(String(format: "%.1f", report.elapsed.secondsValue))",
            ]
        )
        return report
    }

    /// Records the final state, retrying a short blip; a run that cannot be recorded stays `running` until a
    /// later run finds its heartbeat stale.
    private func recordEnd(
        runID: Int64,
        state: RunState,
        counters: RunCounters,
        lastError: String?,
        _ logger: Logger
    ) async {
        for attempt in 1...3 {
            do {
                try await jobRuns.finish(id: runID, state: state, counters: counters, lastError: lastError)
                return
            } catch {
                if attempt == 3 {
                    logger.error(
                        "could not record the end of the run; a later run will mark it abandoned",
                        metadata: ["error": "\(error)"]
                    )
                } else {
                    try? await Task.sleep(for: .seconds(attempt))
                }
            }
        }
    }

    private var settingsJSON: String {
        let rate = configuration.rateLimit.map { "\($0)" } ?? "null"
        let attempts = configuration.maxAttempts.map { "\($0)" } ?? "null"
        return """
            {"concurrency":\(configuration.concurrency),"rate":\(rate),"max_attempts":\(attempts),\
            "claim_batch":\(configuration.effectiveClaimBatch),"lease_seconds":\(configuration.lease.secondsValue),\
            "follow":\(configuration.follow)}
            """
    }
}
