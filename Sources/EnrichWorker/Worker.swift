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

/// A stopping run that was still not gone at its stop deadline (see ``Worker/init(configuration:database:client:tokens:logger:metrics:onProgress:onStopDeadline:)``).
public struct StuckStop: Sendable {
    public var runID: Int64
    /// The state recorded for the run: `interrupted` (a signal) or `failed` (a fatal error).
    public var state: RunState
    /// Rows the run still held; they are taken over by the next run.
    public var heldRows: Int
    /// What happened, for the log and the job runs row.
    public var message: String
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
    private let database: Database
    private let queue: Queue
    private let jobRuns: JobRuns
    private let client: NymbleClient
    private let tokens: any TokenProvider
    private let logger: Logger
    private let onProgress: (@Sendable (WorkerProgress) -> Void)?
    private let metrics: RunMetrics

    private let onStopDeadline: (@Sendable (StuckStop) -> Void)?

    /// - Parameter onStopDeadline: called when a stopping run is still not gone at its stop deadline
    ///   (shutdown grace + a few seconds), after the run's end was recorded; the command line exits the
    ///   process there, leaving the rows still held to be taken over by the next run.
    public init(
        configuration: WorkerConfiguration,
        database: Database,
        client: NymbleClient,
        tokens: any TokenProvider,
        logger: Logger,
        metrics: RunMetrics = RunMetrics(),
        onProgress: (@Sendable (WorkerProgress) -> Void)? = nil,
        onStopDeadline: (@Sendable (StuckStop) -> Void)? = nil
    ) {
        self.onStopDeadline = onStopDeadline
        self.metrics = metrics
        self.configuration = configuration
        self.database = database
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
        let runner = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"
        // Dead runs first: the rows they held go back to pending, to be counted and taken by this run.
        let abandoned = try await jobRuns.abandonDeadRuns(
            staleAfter: configuration.effectiveStaleAfter,
            markedBy: runner,
            maxTakeovers: configuration.maxTakeovers
        )
        WorkerLog.abandoned(abandoned, logger: logger)
        let total = try await queue.availableCount()
        let start = JobRuns.Start(
            jobName: configuration.jobName,
            trigger: configuration.trigger,
            totalItems: total,
            settingsJSON: settingsJSON
        )
        return try await RunLiveness.withRun(database: database, start: start) { liveness in
            await run(liveness: liveness, total: total)
        }
    }

    private func run(liveness: RunLiveness, total: Int64) async -> RunReport {
        let runID = liveness.runID
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
        let control = RunControl(grace: configuration.shutdownGrace)
        let database = DatabaseGuard(limit: configuration.databaseOutageLimit, database: self.database, logger: logger)
        let source = ItemSource(
            queue: queue,
            jobRuns: jobRuns,
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
            progress: RunProgress(initialTotal: total),
            liveness: liveness,
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
        let runLogger = logger
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await RunLogContext.$runID.withValue(runID) { await pipeline.run() } }
            group.addTask {
                await watchStopDeadline(
                    runID: runID,
                    control: control,
                    database: database,
                    statistics: statistics,
                    source: source,
                    logger: runLogger
                )
            }
            await group.next()
            group.cancelAll()
        }

        if Task.isCancelled { control.interrupt() }
        let logins = await tokens.loginCount()
        var counters = statistics.snapshot.counters
        counters.logins = Int64(logins)
        let fatal = control.fatalError
        let state: RunState = fatal != nil ? .failed : control.isInterrupted ? .interrupted : .succeeded
        // Recording the end is bounded: a few seconds for a stopping run (within its stop deadline: after an
        // outage the database may still be away, and the process must not outstay its limit), ten for a
        // finished one (a blip is retried). A run left unrecorded is marked abandoned by the next run.
        let now = ContinuousClock.now
        let recordBy =
            control.stopDeadline.map { min($0 - .milliseconds(500), now + .seconds(3)) } ?? now + .seconds(10)
        await Database.$deadline.withValue(recordBy) {
            await recordEnd(
                runID: runID,
                state: state,
                counters: counters,
                lastError: fatal.map { "\($0)" },
                until: recordBy,
                logger
            )
            let counts = try? await queue.counts()
            await metrics.refresh(counts: counts, logins: logins, rate: await throttle.currentRate())
        }
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
                "seconds": "\(String(format: "%.1f", report.elapsed.inSeconds))",
            ]
        )
        return report
    }

    /// The last resort against a stop that does not end: once the run begins stopping, its statements are
    /// bounded by the stop deadline (shutdown grace + ``RunControl/stopMargin``); if the run is still going
    /// two seconds before it, its end is recorded (best effort, within those seconds), and if it is still
    /// going at the deadline ``onStopDeadline`` is called.
    private func watchStopDeadline(
        runID: Int64,
        control: RunControl,
        database: DatabaseGuard,
        statistics: RunStatistics,
        source: ItemSource,
        logger: Logger
    ) async {
        let deadline: ContinuousClock.Instant
        do {
            try await control.waitForStop()
            guard let stopDeadline = control.stopDeadline else { return }
            deadline = stopDeadline
            database.limit(to: deadline - .milliseconds(2500))
            try await Task.sleep(until: deadline - .seconds(2), clock: .continuous)
        } catch {
            return  // the run ended in time
        }
        let held = await source.held
        let state: RunState = control.fatalError != nil ? .failed : .interrupted
        var message =
            "did not end within the shutdown grace (\(configuration.shutdownGrace)) + \(RunControl.stopMargin): "
            + "stopped with \(held) rows still held (the next run takes them over)"
        if let fatal = control.fatalError { message += "; it was stopping because: \(fatal)" }
        var counters = statistics.snapshot.counters
        counters.logins = Int64(await tokens.loginCount())
        let jobRuns = self.jobRuns
        await Database.$deadline.withValue(deadline - .milliseconds(300)) {
            try? await jobRuns.finish(id: runID, state: state, counters: counters, lastError: message)
        }
        do {
            try await Task.sleep(until: deadline, clock: .continuous)
        } catch {
            return  // the run ended in its last seconds
        }
        logger.critical("\(message)")
        onStopDeadline?(StuckStop(runID: runID, state: state, heldRows: held, message: message))
    }

    /// Records the final state, retrying a short blip (until `until`, when the run is stopping); a run that
    /// cannot be recorded stays `running` until a later run finds it dead and marks it abandoned.
    private func recordEnd(
        runID: Int64,
        state: RunState,
        counters: RunCounters,
        lastError: String?,
        until: ContinuousClock.Instant?,
        _ logger: Logger
    ) async {
        for attempt in 1...3 {
            do {
                try await jobRuns.finish(id: runID, state: state, counters: counters, lastError: lastError)
                return
            } catch {
                let retryAt = ContinuousClock.now + .seconds(attempt)
                if attempt == 3 || until.map({ retryAt >= $0 }) == true {
                    logger.error(
                        "could not record the end of the run; a later run will mark it abandoned",
                        metadata: ["error": "\(error)"]
                    )
                    return
                }
                try? await Task.sleep(until: retryAt, clock: .continuous)
            }
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
