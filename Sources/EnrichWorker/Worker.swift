import EnrichQueue
import EnrichThrottle
import EnrichToken
import Foundation
import Logging
import ServiceLifecycle

/// One run against PostgreSQL and the API: marks dead runs abandoned (taking back their rows), records
/// the run with its liveness lock, runs the ``Pipeline`` over a ``PostgresRunStore``, and reports how it
/// ended. It is a `Service`: under a `ServiceGroup`, SIGINT/SIGTERM stop it gracefully.
public struct Worker: Service {
    public let configuration: WorkerConfiguration
    private let database: Database
    private let api: any EnrichmentAPI
    private let tokens: any TokenProvider
    private let sendBudget: (any SharedSendBudget)?
    private let target: WriteBackTarget?
    private let logger: Logger
    private let accounting: RunAccounting
    private let onProgress: (@Sendable (WorkerProgress) -> Void)?
    private let onStopDeadline: (@Sendable (StuckStop) -> Void)?

    /// - Parameter target: the application's SQL that receives each written batch of results, in the same
    ///   transaction as the queue's write-back.
    /// - Parameter onStopDeadline: called when a stopping run is still not gone at its stop deadline
    ///   (shutdown grace + a few seconds), after the run's end was recorded; the command line exits the
    ///   process there, leaving the rows still held to be taken over by the next run.
    public init(
        configuration: WorkerConfiguration,
        database: Database,
        api: any EnrichmentAPI,
        tokens: any TokenProvider,
        sendBudget: (any SharedSendBudget)? = nil,
        target: WriteBackTarget? = nil,
        logger: Logger,
        metrics: RunMetrics = RunMetrics(),
        onProgress: (@Sendable (WorkerProgress) -> Void)? = nil,
        onStopDeadline: (@Sendable (StuckStop) -> Void)? = nil
    ) {
        self.configuration = configuration
        self.database = database
        self.api = api
        self.tokens = tokens
        self.sendBudget = sendBudget
        self.target = target
        self.logger = logger
        self.accounting = RunAccounting(metrics: metrics)
        self.onProgress = onProgress
        self.onStopDeadline = onStopDeadline
    }

    public func run() async throws {
        let report = try await execute()
        if let error = report.error { throw error }
    }

    /// Performs one run and reports how it ended. Throws only when the run cannot start (bad settings, no
    /// database); failures after the start are in the report and in the job runs table.
    public func execute() async throws -> RunReport {
        try configuration.validate()
        let host = ProcessInfo.processInfo.hostName
        let pid = ProcessInfo.processInfo.processIdentifier
        // Dead runs first: the rows they held go back to pending, to be counted and taken by this run.
        let abandoned = try await JobRuns(database: database).abandonDeadRuns(
            staleAfter: configuration.effectiveStaleAfter,
            markedBy: "\(host):\(pid)",
            maxTakeovers: configuration.maxTakeovers
        )
        WorkerLog.abandoned(abandoned, logger: logger)
        let queue = Queue(database: database)
        do {
            if try await queue.refreshStatisticsIfStale() {
                logger.debug("the queue's planner statistics were stale: analyzed")
            }
        } catch {
            logger.warning("could not refresh the queue's planner statistics", metadata: ["error": "\(error)"])
        }
        let total = try await queue.availableCount()
        let start = JobRuns.Start(
            jobName: configuration.jobName,
            trigger: configuration.trigger,
            totalItems: total,
            settingsJSON: settingsJSON
        )
        return try await RunLiveness.withRun(database: database, start: start) { liveness in
            let runID = liveness.runID
            RunLogContext.setProcessRun(runID)
            var logger = self.logger
            logger[metadataKey: "run_id"] = "\(runID)"
            logger.info(
                "run started",
                metadata: [
                    "job": "\(configuration.jobName)", "available_rows": "\(total)",
                    "concurrency": "\(configuration.concurrency)",
                    "rate": "\(configuration.rateLimit.map { "\($0)/s" } ?? "unknown (adaptive)")",
                    "mode": "\(configuration.follow ? "follow" : "drain")",
                ]
            )
            let store = PostgresRunStore(
                database: database,
                liveness: liveness,
                owner: "\(host):\(pid):run-\(runID)",
                configuration: configuration,
                target: target,
                logger: logger
            )
            let pipeline = Pipeline(
                runID: runID,
                store: store,
                api: api,
                tokens: tokens,
                sendBudget: sendBudget,
                configuration: configuration,
                accounting: accounting,
                initialTotal: total,
                clock: ContinuousClock(),
                logger: logger,
                onProgress: onProgress,
                onStopDeadline: onStopDeadline
            )
            let report = await RunLogContext.$runID.withValue(runID) { await pipeline.run() }
            let counters = report.statistics.counters
            logger.info(
                "run finished",
                metadata: [
                    "state": "\(report.state.rawValue)", "done": "\(counters.succeeded)",
                    "failed": "\(counters.failed)", "retried": "\(counters.retried)",
                    "throttled": "\(counters.throttled)", "logins": "\(report.logins)",
                    "seconds": "\(String(format: "%.1f", report.elapsed.inSeconds))",
                ]
            )
            return report
        }
    }

    private var settingsJSON: String {
        let rate = configuration.rateLimit.map { "\($0)" } ?? "null"
        let attempts = configuration.maxAttempts.map { "\($0)" } ?? "null"
        return """
            {"concurrency":\(configuration.concurrency),"rate":\(rate),"max_attempts":\(attempts),\
            "claim_batch":\(configuration.effectiveClaimBatch),"lease_seconds":\(configuration.lease.inSeconds),\
            "follow":\(configuration.follow)}
            """
    }
}
