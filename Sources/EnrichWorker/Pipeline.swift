import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import ServiceLifecycle

/// The tasks of one run and how they end. Everything runs in task groups scoped to ``run()``:
///
/// - the writer, which outlives the workers so that their last results are written;
/// - the claimer, heartbeat (job runs row, lease extension, counter compaction), LISTEN (follow mode),
///   progress, and the graceful-shutdown watcher;
/// - the worker tasks plus a grace timer that cancels in-flight calls once the shutdown grace is over.
struct Pipeline<C: Clock>: Sendable where C.Duration == Duration {
    let configuration: WorkerConfiguration
    let runID: Int64
    let owner: String
    let progress: RunProgress
    let liveness: RunLiveness
    let queue: Queue
    let jobRuns: JobRuns
    let tokens: any TokenProvider
    let source: ItemSource
    let writer: ResultWriter
    let throttle: Throttle<C>
    let processor: ItemProcessor<C>
    let statistics: RunStatistics
    let control: RunControl
    let database: DatabaseGuard
    let logger: Logger
    let onProgress: (@Sendable (WorkerProgress) -> Void)?

    func run() async {
        await withTaskGroup(of: Void.self) { outer in
            outer.addTask { await writeResults() }
            outer.addTask {
                await withTaskGroup(of: Void.self) { services in
                    services.addTask { await heartbeat() }
                    services.addTask { await watchForShutdown() }
                    if configuration.follow { services.addTask { await listen() } }
                    if onProgress != nil { services.addTask { await reportProgress() } }
                    await withTaskGroup(of: Void.self) { pipeline in
                        pipeline.addTask { await claim() }
                        await callAPI()
                        // Stopped, not cancelled: a claim in flight completes, so its rows are released below
                        // instead of staying leased to nobody.
                        await source.stop()
                    }
                    services.cancelAll()
                }
                await writer.release(await source.takeUnstarted())
                await writer.finish()
            }
        }
        await writer.flushRemaining()
    }

    // MARK: Tasks

    private func writeResults() async {
        do {
            try await writer.run()
        } catch is CancellationError {
            control.interrupt()
            await source.stop()
        } catch {
            await stop(fatal: error)
        }
    }

    private func claim() async {
        do {
            try await source.runClaimer()
        } catch is CancellationError {
            // Cancelled from outside: wake the worker tasks waiting for rows so that the groups can end.
            control.interrupt()
            await source.stop()
        } catch {
            await stop(fatal: error)
        }
    }

    /// The bounded task group: `concurrency` tasks each take the next row until there is none.
    private func callAPI() async {
        await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<configuration.concurrency {
                group.addTask {
                    await work()
                    return false
                }
            }
            group.addTask {
                // The grace timer: true when in-flight calls must be cancelled.
                do {
                    try await control.waitForStop()
                    try await Task.sleep(for: configuration.shutdownGrace)
                    return true
                } catch {
                    return false
                }
            }
            var running = configuration.concurrency
            while let graceOver = await group.next() {
                if graceOver {
                    logger.warning(
                        "shutdown grace over: cancelling in-flight calls; their rows are released",
                        metadata: ["grace": "\(configuration.shutdownGrace)"]
                    )
                    group.cancelAll()
                } else {
                    running -= 1
                    if running == 0 { group.cancelAll() }
                }
            }
        }
    }

    private func work() async {
        while let item = await source.next() {
            do {
                let result = try await processor.process(item)
                await writer.submit(result)
            } catch {
                await writer.submit(.released(item, after: .zero))
                await stop(fatal: error)
                return
            }
        }
    }

    /// Every heartbeat: proves the run alive (liveness lock, job runs row), takes over the rows of dead runs,
    /// extends this run's leases, refreshes the progress total and the metrics, and watches for a stall.
    private func heartbeat() async {
        let compactionInterval = Duration.seconds(60)
        var sinceCompaction = Duration.zero
        var stall = StallWatch(warnAfter: configuration.stallWarning, stopAfter: configuration.stallTimeout)
        while true {
            do {
                try await Task.sleep(for: configuration.heartbeatInterval)
                if try await database.run("renew the liveness lock", { try await liveness.renew() }) {
                    logger.notice("took the run's liveness lock again (its database session had ended)")
                }
                let (jobRuns, queue, runID, owner, configuration) = (jobRuns, queue, runID, owner, configuration)
                let abandoned = try await database.run("take over the rows of dead runs") {
                    try await jobRuns.abandonDeadRuns(
                        excluding: runID,
                        staleAfter: configuration.effectiveStaleAfter,
                        markedBy: owner,
                        maxTakeovers: configuration.maxTakeovers
                    )
                }
                WorkerLog.abandoned(abandoned, logger: logger)
                if abandoned.rowsFreed > 0 { source.demand.fire() }
                let counts = try await database.run("count rows") { try await queue.counts() }
                let snapshot = statistics.snapshot
                let total = progress.update(finished: snapshot.finished, remaining: counts.pending + counts.running)
                let held = await source.held
                let stalled = stall.observe(
                    held: held,
                    settled: snapshot.settled,
                    answers: snapshot.calls,
                    waiting: await throttle.isPaused() || database.isFailing,
                    interval: configuration.heartbeatInterval
                )
                var counters = snapshot.counters
                counters.logins = Int64(await tokens.loginCount())
                let alive = try await database.run("heartbeat") {
                    try await jobRuns.heartbeat(
                        id: runID,
                        counters: counters,
                        totalItems: total,
                        stalledFor: stalled.reported
                    )
                }
                guard alive else {
                    throw WorkerError(
                        .abandoned,
                        "another runner marked this run abandoned (its liveness lock or heartbeat was gone, e.g. "
                            + "during a database outage longer than the stale limit); stopping so that two runs "
                            + "do not hold the same rows"
                    )
                }
                if stalled.warn {
                    logger.error(
                        "no row completed while holding rows, with the database and the API answering: looks stuck",
                        metadata: ["held": "\(held)", "for": "\(stalled.reported ?? .zero)"]
                    )
                }
                if stalled.stop {
                    throw WorkerError(
                        .stalled,
                        "no row completed for \(configuration.stallTimeout) while holding \(held) rows, "
                            + "with the database and the API answering; stopping so that the rows go to another run"
                    )
                }
                _ = try await database.run("extend leases") {
                    try await queue.extendLeases(owner: owner, lease: configuration.lease)
                }
                await statistics.metrics.refresh(
                    counts: counts,
                    logins: Int(counters.logins),
                    rate: await throttle.currentRate()
                )
                sinceCompaction += configuration.heartbeatInterval
                if sinceCompaction >= compactionInterval {
                    sinceCompaction = .zero
                    try await database.run("compact counters") { try await queue.compactCounts() }
                }
            } catch is CancellationError {
                return
            } catch {
                await stop(fatal: error)
                return
            }
        }
    }

    private func watchForShutdown() async {
        do {
            try await gracefulShutdown()
        } catch {
            return
        }
        logger.notice(
            "shutdown requested: no new rows; in-flight calls may finish",
            metadata: ["grace": "\(configuration.shutdownGrace)"]
        )
        control.interrupt()
        await source.stop()
    }

    /// Follow mode: wakes the claimer on every NOTIFY; reconnects after a failure (polling covers the gap).
    private func listen() async {
        let demand = source.demand
        while !Task.isCancelled {
            do {
                try await queue.listenForNewWork { demand.fire() }
            } catch {
                if Task.isCancelled { return }
                logger.warning(
                    "LISTEN for new work failed; polling until it reconnects",
                    metadata: ["error": "\(error)", "poll_interval": "\(configuration.pollInterval)"]
                )
                try? await Task.sleep(for: configuration.pollInterval)
            }
        }
    }

    private func reportProgress() async {
        guard let onProgress else { return }
        let clock = ContinuousClock()
        let started = clock.now
        var last = (instant: started, finished: Int64(0))
        while true {
            do { try await Task.sleep(for: configuration.progressInterval) } catch { return }
            let now = clock.now
            let snapshot = statistics.snapshot
            let finished = snapshot.counters.succeeded + snapshot.counters.failed
            let seconds = last.instant.duration(to: now).inSeconds
            onProgress(
                WorkerProgress(
                    runID: runID,
                    statistics: snapshot,
                    totalItems: progress.total(finished: finished),
                    elapsed: started.duration(to: now),
                    itemsPerSecond: seconds > 0 ? Double(finished - last.finished) / seconds : 0,
                    sendRate: await throttle.currentRate(),
                    logins: await tokens.loginCount()
                )
            )
            last = (now, finished)
        }
    }

    private func stop(fatal error: any Error) async {
        if control.fatalError == nil {
            logger.error("run stopping: \(error)")
        }
        control.fail(error)
        await source.stop()
    }
}

/// The stall watchdog's state: a run that holds rows but settles none, gets no API answer, and is not
/// waiting for a pause or an outage, makes no progress. Pure: the heartbeat feeds it.
struct StallWatch {
    let warnAfter: Duration
    /// Zero: never stop.
    let stopAfter: Duration
    private var last: (settled: Int64, answers: Int64)?
    private var stalled: Duration = .zero
    private var warned = false

    init(warnAfter: Duration, stopAfter: Duration) {
        self.warnAfter = warnAfter
        self.stopAfter = stopAfter
    }

    struct Verdict: Equatable {
        /// How long the run has been stalled, once that is long enough to show (nil otherwise).
        var reported: Duration?
        /// Log it now (once per stall).
        var warn = false
        /// Stop the run.
        var stop = false
    }

    mutating func observe(held: Int, settled: Int64, answers: Int64, waiting: Bool, interval: Duration) -> Verdict {
        defer { last = (settled, answers) }
        let idle = last.map { $0.settled == settled && $0.answers == answers } ?? false
        guard held > 0, idle, !waiting else {
            stalled = .zero
            warned = false
            return Verdict()
        }
        stalled += interval
        guard stalled >= warnAfter else { return Verdict() }
        var verdict = Verdict(reported: stalled)
        if !warned {
            warned = true
            verdict.warn = true
        }
        verdict.stop = stopAfter > .zero && stalled >= stopAfter
        return verdict
    }
}
