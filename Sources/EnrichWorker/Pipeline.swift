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
    let total: Int64
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
                    try await control.waitForInterrupt()
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

    private func heartbeat() async {
        let compactionInterval = Duration.seconds(60)
        var sinceCompaction = Duration.zero
        while true {
            do {
                try await Task.sleep(for: configuration.heartbeatInterval)
                var counters = statistics.snapshot.counters
                counters.logins = Int64(await tokens.loginCount())
                let (jobRuns, queue, runID, owner, lease) = (jobRuns, queue, runID, owner, configuration.lease)
                let alive = try await database.run("heartbeat") {
                    try await jobRuns.heartbeat(id: runID, counters: counters)
                }
                guard alive else {
                    throw WorkerError(
                        .abandoned,
                        "another runner marked this run abandoned (its heartbeat had gone stale, e.g. during a "
                            + "database outage longer than --stale-after); stopping so that two runs do not overlap"
                    )
                }
                _ = try await database.run("extend leases") { try await queue.extendLeases(owner: owner, lease: lease) }
                await statistics.metrics.refresh(
                    queue: queue,
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
            let seconds = last.instant.duration(to: now).secondsValue
            onProgress(
                WorkerProgress(
                    runID: runID,
                    statistics: snapshot,
                    totalItems: total,
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
