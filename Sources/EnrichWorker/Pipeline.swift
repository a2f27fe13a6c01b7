import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import ServiceLifecycle

/// One run's tasks and how they end, against any ``RunStore`` and ``EnrichmentAPI`` on any clock (the
/// database and HTTP in production; in-memory edges and a manual clock in unit tests).
///
/// ```
/// ClaimedRows ──▶ `concurrency` worker tasks (for await row in rows) ──▶ ResultBuffer ──▶ ResultWriter
///  (claimer)        ItemProcessor: throttle → token → API                 (batches)   (store.write)
/// Heartbeat · LeaseKeeper · new-work listener · progress · shutdown watcher · stop deadline   ─▶ RunAccounting
/// ```
///
/// Stopping: SIGINT/SIGTERM (or a fatal error) ends the rows; calls in flight get the shutdown grace, then
/// are cancelled (their rows released); rows claimed but not started are released; the writer writes what
/// is left. Whatever is stuck, the stop deadline (grace + ``RunControl/stopMargin``) records the end and
/// calls ``onStopDeadline``.
struct Pipeline<C: Clock>: Sendable where C.Duration == Duration {
    let runID: Int64
    let store: any RunStore
    let api: any EnrichmentAPI
    let tokens: any TokenProvider
    /// The fleet's send budget; nil for a process on its own.
    var sendBudget: (any SharedSendBudget)? = nil
    let configuration: WorkerConfiguration
    let accounting: RunAccounting
    let initialTotal: Int64
    let clock: C
    let logger: Logger
    var onProgress: (@Sendable (WorkerProgress) -> Void)? = nil
    var onStopDeadline: (@Sendable (StuckStop) -> Void)? = nil

    /// Runs to the end (drained, stopped or failed), records the end through the store, and reports it.
    func run() async -> RunReport {
        let started = clock.now
        let control = RunControl(grace: configuration.shutdownGrace, clock: clock)
        let throttle = Throttle(
            configuration: .init(
                controller: .init(maximumRate: configuration.rateLimit),
                maximumPause: configuration.maximumPause
            ),
            clock: clock,
            logger: logger,
            budget: sendBudget
        )
        let parts = Parts(pipeline: self, control: control, throttle: throttle)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await parts.runTasks() }
            group.addTask { await parts.watchStopDeadline() }
            await group.next()
            group.cancelAll()
        }
        if Task.isCancelled { control.interrupt() }
        let logins = await tokens.loginCount()
        var counters = accounting.snapshot.counters
        counters.logins = Int64(logins)
        let fatal = control.fatalError
        let state: RunState = fatal != nil ? .failed : control.isInterrupted ? .interrupted : .succeeded
        // Bounded: two seconds for a stopping run (inside its stop deadline: after an outage the database may
        // still be away), ten for a finished one. A run left unrecorded is marked abandoned by the next.
        let within = control.stopDeadline.map { min(clock.now.duration(to: $0) - .milliseconds(500), .seconds(2)) }
        do {
            try await store.recordEnd(
                RunEnd(state: state, counters: counters, lastError: fatal.map { "\($0)" }),
                within: max(within ?? .seconds(10), .milliseconds(100))
            )
        } catch {
            logger.error(
                "could not record the end of the run; a later run will mark it abandoned",
                metadata: ["error": "\(error)"]
            )
        }
        let counts = store.isFailing ? nil : try? await store.counts()
        await accounting.metrics.refresh(counts: counts, logins: logins, rate: nil)
        return RunReport(
            runID: runID,
            state: state,
            statistics: accounting.snapshot,
            logins: logins,
            elapsed: started.duration(to: clock.now),
            error: fatal
        )
    }

    /// The parts of a running pipeline, built once per run.
    fileprivate struct Parts: Sendable {
        let pipeline: Pipeline
        let context: RunContext<C>
        let control: RunControl<C>
        let throttle: Throttle<C>
        let ledger = RowLedger()
        let rows: ClaimedRows<C>
        let buffer: ResultBuffer
        let writer: ResultWriter<C>
        let processor: ItemProcessor<C>
        let progress: RunProgress

        var configuration: WorkerConfiguration { pipeline.configuration }
        var logger: Logger { pipeline.logger }
        var clock: C { pipeline.clock }

        init(pipeline: Pipeline, control: RunControl<C>, throttle: Throttle<C>) {
            self.pipeline = pipeline
            self.control = control
            self.throttle = throttle
            let context = RunContext(
                store: pipeline.store,
                accounting: pipeline.accounting,
                configuration: pipeline.configuration,
                clock: pipeline.clock,
                logger: pipeline.logger
            )
            self.context = context
            rows = ClaimedRows(context: context, ledger: ledger)
            buffer = ResultBuffer(batchSize: context.configuration.writeBatch)
            writer = ResultWriter(context: context, buffer: buffer, ledger: ledger)
            processor = ItemProcessor(context: context, api: pipeline.api, tokens: pipeline.tokens, throttle: throttle)
            progress = RunProgress(initialTotal: pipeline.initialTotal)
        }

        /// The writer outlives everything else, so that the last results are written.
        func runTasks() async {
            let writerFailed = await withTaskGroup(of: Bool.self) { group in
                group.addTask { await writeResults() }
                group.addTask {
                    await withTaskGroup(of: Void.self) { services in
                        services.addTask { await keep("heartbeat") { try await Heartbeat(parts: self).run() } }
                        services.addTask { await keep("lease keeper") { try await LeaseKeeper(parts: self).run() } }
                        services.addTask { await watchForShutdown() }
                        if configuration.follow { services.addTask { await listen() } }
                        if let budget = pipeline.sendBudget {
                            services.addTask { await listenForFleetPauses(budget) }
                            services.addTask { await throttle.leadFleet() }
                        }
                        if pipeline.onProgress != nil { services.addTask { await reportProgress() } }
                        await withTaskGroup(of: Void.self) { work in
                            work.addTask { await keep("claimer") { try await rows.runClaimer() } }
                            await processRows()
                            // Stopped, not cancelled: a claim in flight completes, its rows are released below.
                            rows.stop()
                        }
                        services.cancelAll()
                    }
                    await writer.releaseUnstarted(rows.takeUnstarted())
                    buffer.close()
                    return false
                }
                var failed = false
                for await result in group { failed = failed || result }
                return failed
            }
            if writerFailed { await writer.flushRemaining() }
        }

        /// The bounded task group: `concurrency` worker tasks, each taking rows from ``ClaimedRows`` until it
        /// ends, and the grace timer that cancels the calls in flight once a stop's grace is over. Long-lived
        /// workers rather than a task per row: a row then costs no task creation and no wake-up of a
        /// spawning loop (measured: about a fifth of the CPU per row with an instant API).
        private func processRows() async {
            await withTaskGroup(of: TaskEnded.self) { group in
                group.addTask {
                    do {
                        try await control.waitForStop()
                        // Calls not sent yet are not waited for: their rows go back unstarted.
                        await throttle.stopWaiting()
                        try await clock.sleep(for: configuration.shutdownGrace)
                        return .graceOver
                    } catch {
                        return .timerCancelled
                    }
                }
                for _ in 0..<configuration.concurrency {
                    group.addTask {
                        for await row in rows {
                            // A stop means no new call: a row taken just before it goes back unstarted.
                            if control.stopDeadline != nil {
                                buffer.add(.released(Release(item: row, after: .zero)))
                                continue
                            }
                            await process(row)
                        }
                        return .worker
                    }
                }
                var working = configuration.concurrency
                while let ended = await group.next() {
                    switch ended {
                    case .worker:
                        working -= 1
                        if working == 0 { group.cancelAll() }
                    case .graceOver:
                        logger.warning(
                            "shutdown grace over: cancelling in-flight calls; their rows are released",
                            metadata: ["grace": "\(configuration.shutdownGrace)"]
                        )
                        group.cancelAll()
                    case .timerCancelled:
                        break
                    }
                }
            }
        }

        private func process(_ row: LeasedItem) async {
            do {
                buffer.add(try await processor.process(row))
            } catch {
                buffer.add(.released(Release(item: row, after: .zero)))
                stop(fatal: error)
            }
        }

        /// Runs the writer; true when it gave up (the database stayed away past the outage limit).
        private func writeResults() async -> Bool {
            do {
                try await writer.run()
                return false
            } catch is CancellationError {
                return false  // cut short at the stop deadline
            } catch {
                stop(fatal: error)
                return true
            }
        }

        /// Runs a part that ends only by throwing: its error stops the run (cancellation excepted).
        private func keep(_ name: String, _ body: @Sendable () async throws -> Void) async {
            do {
                try await body()
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                stop(fatal: error)
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
            rows.stop()
        }

        /// Follow mode: wakes the claimer on every NOTIFY (polling covers a lost LISTEN).
        private func listen() async {
            let demand = rows.demand
            await keepListening(failure: "LISTEN for new work failed; polling until it works again") {
                try await pipeline.store.listenForNewWork { demand.fire() }
            }
        }

        /// In a fleet: applies the pauses other workers announce at once (LISTEN/NOTIFY; the throttle's own
        /// reads of the pause cover a lost LISTEN).
        private func listenForFleetPauses(_ budget: any SharedSendBudget) async {
            let (pauses, announce) = AsyncStream.makeStream(of: SharedPause.self, bufferingPolicy: .bufferingNewest(16))
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await pause in pauses { await throttle.fleetPaused(pause) }
                }
                await keepListening(
                    failure:
                        "LISTEN for the fleet's pauses failed; reading the pause every quarter second until it works"
                ) { try await budget.listenForPauses { announce.yield($0) } }
                announce.finish()
            }
        }

        /// Runs `listen` until cancelled, again one poll interval after it fails (logged) or ends.
        private func keepListening(failure: String, _ listen: () async throws -> Void) async {
            while !Task.isCancelled {
                do {
                    try await listen()
                } catch {
                    if Task.isCancelled { return }
                    logger.warning(
                        "\(failure)",
                        metadata: ["error": "\(error)", "poll_interval": "\(configuration.pollInterval)"]
                    )
                }
                try? await clock.sleep(for: configuration.pollInterval)
            }
        }

        private func reportProgress() async {
            guard let onProgress = pipeline.onProgress else { return }
            let started = clock.now
            var last = (instant: started, finished: Int64(0))
            while true {
                do { try await clock.sleep(for: configuration.progressInterval) } catch { return }
                let now = clock.now
                let snapshot = pipeline.accounting.snapshot
                let seconds = last.instant.duration(to: now).inSeconds
                onProgress(
                    WorkerProgress(
                        runID: pipeline.runID,
                        statistics: snapshot,
                        totalItems: progress.total(finished: snapshot.finished),
                        elapsed: started.duration(to: now),
                        itemsPerSecond: seconds > 0 ? Double(snapshot.finished - last.finished) / seconds : 0,
                        sendRate: await throttle.currentRate(),
                        logins: await pipeline.tokens.loginCount()
                    )
                )
                last = (now, snapshot.finished)
            }
        }

        /// The last resort against a stop that does not end: once the run begins stopping, its statements
        /// are bounded by the stop deadline; two seconds before it, a run still going records its end, and
        /// at the deadline ``Pipeline/onStopDeadline`` is called (the command line exits the process there).
        func watchStopDeadline() async {
            let deadline: C.Instant
            do {
                try await control.waitForStop()
                guard let stopDeadline = control.stopDeadline else { return }
                deadline = stopDeadline
                pipeline.store.limitStatements(to: max(.zero, clock.now.duration(to: deadline) - .milliseconds(2500)))
                try await clock.sleep(until: deadline.advanced(by: .seconds(-2)), tolerance: nil)
            } catch {
                return  // the run ended in time
            }
            let held = ledger.outstanding + rows.buffered
            let state: RunState = control.fatalError != nil ? .failed : .interrupted
            var message =
                "did not end within the shutdown grace (\(configuration.shutdownGrace)) + \(RunControl<C>.stopMargin): "
                + "stopped with \(held) rows still held (the next run takes them over)"
            if let fatal = control.fatalError { message += "; it was stopping because: \(fatal)" }
            var counters = pipeline.accounting.snapshot.counters
            counters.logins = Int64(await pipeline.tokens.loginCount())
            try? await pipeline.store.recordEnd(
                RunEnd(state: state, counters: counters, lastError: message),
                within: .milliseconds(1700)
            )
            do {
                try await clock.sleep(until: deadline, tolerance: nil)
            } catch {
                return  // the run ended in its last seconds
            }
            logger.critical("\(message)")
            pipeline.onStopDeadline?(StuckStop(runID: pipeline.runID, state: state, heldRows: held, message: message))
        }

        func stop(fatal error: any Error) {
            if control.fail(error) {
                logger.error("run stopping: \(error)")
            } else {
                logger.warning("error while stopping (it does not change why the run stops): \(error)")
            }
            rows.stop()
        }
    }
}

/// How a child of the worker tasks' group ended.
private enum TaskEnded: Sendable {
    case worker, graceOver, timerCancelled
}

extension Heartbeat {
    fileprivate init(parts: Pipeline<C>.Parts) {
        self.init(
            context: parts.context,
            rows: parts.rows,
            ledger: parts.ledger,
            progress: parts.progress,
            throttle: parts.throttle,
            tokens: parts.pipeline.tokens
        )
    }
}

extension LeaseKeeper {
    fileprivate init(parts: Pipeline<C>.Parts) { self.init(context: parts.context, rows: parts.rows) }
}
