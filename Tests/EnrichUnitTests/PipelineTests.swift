import EnrichCore
import EnrichQueue
import EnrichToken
import Logging
import NymbleAPI
import ServiceLifecycleTestKit
import Synchronization
import Testing

@testable import EnrichWorker

/// The pipeline's concurrency, shutdown, retry and accounting logic, against in-memory edges on a manual
/// clock: no database, no network, no sleeping (each test takes milliseconds). The same behaviours are
/// also proven end to end against PostgreSQL and the simulator in the integration suite.
@Suite("Pipeline with in-memory edges", .timeLimit(.minutes(1)))
struct PipelineTests {
    static let quiet = Logger(label: "quiet", factory: { _ in SwiftLogNoOpLogHandler() })

    static func pairs(_ count: Int) -> [Pair] {
        (1...count).map { Pair(organizationId: "org", userId: "u\($0)") }
    }

    static func configuration(_ tweak: (inout WorkerConfiguration) -> Void = { _ in }) -> WorkerConfiguration {
        var configuration = WorkerConfiguration()
        configuration.concurrency = 4
        configuration.stallTimeout = .zero
        configuration.retryBackoff = .init(base: .milliseconds(10), cap: .milliseconds(50))
        tweak(&configuration)
        return configuration
    }

    /// Runs a pipeline over `store` and `api` on `clock`, driving the clock until it ends.
    static func run(
        store: MemoryRunStore,
        api: ScriptedAPI,
        clock: ManualClock,
        configuration: WorkerConfiguration = configuration(),
        login: @escaping @Sendable () async throws -> LoginGrant = {
            LoginGrant(token: AccessToken("t"), tokenType: "api-key", expiresIn: .seconds(86_400))
        },
        onStopDeadline: (@Sendable (StuckStop) -> Void)? = nil
    ) async -> RunReport {
        let tokens = SharedTokenStore(clock: clock, logger: quiet, login: login)
        let pipeline = Pipeline(
            runID: 1,
            store: store,
            api: api,
            tokens: tokens,
            configuration: configuration,
            accounting: RunAccounting(),
            initialTotal: Int64(store.rows.count),
            clock: clock,
            logger: quiet,
            onStopDeadline: onStopDeadline
        )
        let finished = Locked(false)
        return await withTaskGroup(of: RunReport?.self) { group in
            group.addTask {
                let report = await pipeline.run()
                finished.withLock { $0 = true }
                return report
            }
            group.addTask {
                await clock.drive { finished.withLock { $0 } }
                return nil
            }
            var report: RunReport?
            for await result in group where result != nil { report = result }
            return report!
        }
    }

    /// Answers every pair with ``ScriptedAPI/context(_:)`` after `latency` on `clock`.
    static func api(clock: ManualClock, latency: Duration = .milliseconds(5)) -> ScriptedAPI {
        ScriptedAPI { pair, _ throws(NymbleAPIError) in
            do { try await clock.sleep(for: latency) } catch {
                throw NymbleAPIError(.transport, endpoint: "access", detail: "cancelled")
            }
            return ScriptedAPI.context(pair)
        }
    }

    /// Runs a pipeline (as ``run(store:api:clock:configuration:login:onStopDeadline:)``) and sends it
    /// SIGTERM once `calls` calls have been made, after `beforeShutdown`.
    static func runStopped(
        after calls: Int,
        store: MemoryRunStore,
        api: ScriptedAPI,
        clock: ManualClock,
        configuration: WorkerConfiguration,
        onStopDeadline: (@Sendable (StuckStop) -> Void)? = nil,
        beforeShutdown: @escaping @Sendable () -> Void = {}
    ) async -> RunReport {
        await testGracefulShutdown { trigger in
            await withTaskGroup(of: RunReport?.self) { group in
                group.addTask {
                    await run(
                        store: store,
                        api: api,
                        clock: clock,
                        configuration: configuration,
                        onStopDeadline: onStopDeadline
                    )
                }
                group.addTask {
                    while api.called.count < calls { await Task.yield() }
                    beforeShutdown()
                    trigger.triggerGracefulShutdown()
                    return nil
                }
                var report: RunReport?
                for await result in group where result != nil { report = result }
                return report!
            }
        }
    }

    @Test("a drain writes every row once with its context, and the accounting matches the store")
    func drain() async {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(300))
        let api = Self.api(clock: clock)
        let report = await Self.run(store: store, api: api, clock: clock)
        #expect(report.state == .succeeded)
        #expect(report.statistics.counters.succeeded == 300 && report.statistics.counters.claimed == 300)
        #expect(api.called.count == 300)
        #expect(
            store.rows.allSatisfy {
                $0.state == .done && $0.attempts == 1 && $0.context == ScriptedAPI.context($0.pair)
            }
        )
        #expect(store.ends.map(\.state) == [.succeeded])
    }

    @Test("shutdown mid-batch: calls in flight finish within the grace, unstarted rows are released, none lost")
    func shutdownMidBatch() async throws {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(40))
        let api = Self.api(clock: clock, latency: .seconds(1))
        let report = await Self.runStopped(
            after: 8,
            store: store,
            api: api,
            clock: clock,
            configuration: Self.configuration { $0.shutdownGrace = .seconds(2) }
        )
        #expect(report.state == .interrupted)
        let rows = store.rows
        let done = rows.filter { $0.state == .done }.count
        #expect(done == api.called.count, "every call that was sent finished and was written")
        #expect(rows.filter { $0.state == .pending }.count == 40 - done, "the rest released, no attempt spent")
        #expect(rows.allSatisfy { $0.state != .running && ($0.state == .done || $0.attempts == 0) })
        #expect(done < 40)
    }

    @Test("a write that fails after SIGTERM does not turn the interrupted run into a failed one")
    func failureWhileStoppingStaysInterrupted() async throws {
        let clock = ManualClock()
        let stopping = Locked(false)
        let store = MemoryRunStore(pairs: Self.pairs(40)) { _ in
            if stopping.withLock({ $0 }) { throw DatabaseError(.timedOut, "gave no answer within 0 s") }
        }
        let api = Self.api(clock: clock, latency: .seconds(1))
        let report = await Self.runStopped(
            after: 8,
            store: store,
            api: api,
            clock: clock,
            configuration: Self.configuration { $0.shutdownGrace = .seconds(2) },
            beforeShutdown: { stopping.withLock { $0 = true } }
        )
        #expect(report.state == .interrupted, "stopped because asked to, whatever failed while stopping")
        #expect(report.error == nil)
        // Recorded once, or twice when the stop deadline's last-resort record came first (the failing writes
        // are retried until then): never as failed.
        #expect(!store.ends.isEmpty && store.ends.allSatisfy { $0.state == .interrupted }, "\(store.ends)")
    }

    @Test("a 429 pauses every task for its Retry-After, and the row is retried in place without spending an attempt")
    func rateLimitPausesEveryTask() async {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(60))
        let callTimes = Locked<[(ManualClock.Instant, Bool)]>([])
        let api = ScriptedAPI { pair, number throws(NymbleAPIError) in
            let throttle = number == 10
            callTimes.withLock { $0.append((clock.now, throttle)) }
            if throttle {
                throw NymbleAPIError(
                    .rateLimited,
                    endpoint: "access",
                    status: 429,
                    retryAfter: .seconds(10),
                    detail: "429"
                )
            }
            do { try await clock.sleep(for: .milliseconds(5)) } catch {
                throw NymbleAPIError(.transport, endpoint: "access", detail: "cancelled")
            }
            return ScriptedAPI.context(pair)
        }
        let report = await Self.run(store: store, api: api, clock: clock)
        #expect(report.state == .succeeded)
        #expect(report.statistics.counters.throttled == 1)
        let times = callTimes.withLock { $0 }
        let throttledAt = try! #require(times.first { $0.1 }?.0)
        // Calls already past the throttle when the 429 came (at most the other tasks) may still arrive just
        // after it; none may start later during the pause.
        let racing = times.filter { $0.0 > throttledAt && $0.0 <= throttledAt.advanced(by: .milliseconds(100)) }
        let duringPause = times.filter {
            $0.0 > throttledAt.advanced(by: .milliseconds(100)) && $0.0 < throttledAt.advanced(by: .seconds(10))
        }
        #expect(racing.count < 4, "only calls already in flight: \(racing.count)")
        #expect(duringPause.isEmpty, "no call was sent during the pause: \(duringPause.count)")
        #expect(store.rows.allSatisfy { $0.state == .done && $0.attempts == 1 }, "the 429 spent no attempt")
    }

    @Test("a row taken over by another run mid-call: its result is discarded as stale, never written over")
    func leaseLoss() async {
        let clock = ManualClock()
        let pairs = Self.pairs(30)
        let store = MemoryRunStore(pairs: pairs)
        let stolen = pairs[4]
        let api = ScriptedAPI { pair, _ throws(NymbleAPIError) in
            if pair == stolen { store.takeOver(pair) }
            return ScriptedAPI.context(pair)
        }
        let report = await Self.run(store: store, api: api, clock: clock)
        #expect(report.state == .succeeded)
        #expect(report.statistics.stale == 1 && report.statistics.counters.succeeded == 29)
        let row = store.rows[4]
        #expect(row.state == .done && row.context == MemoryRunStore.otherRunContext, "the other run's result stands")
    }

    @Test("a writer slower than the API: rows held stay under the claim target + concurrency + two write batches")
    func backpressure() async {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(400)) { _ in try await clock.sleep(for: .milliseconds(200)) }
        let api = Self.api(clock: clock, latency: .milliseconds(1))
        let configuration = Self.configuration {
            $0.claimBatch = 20
            $0.writeBatch = 10
        }
        let report = await Self.run(store: store, api: api, clock: clock, configuration: configuration)
        #expect(report.state == .succeeded && store.rows.allSatisfy { $0.state == .done })
        // Without backpressure the API's pace (4 tasks, 1 ms a call) would lease nearly all 400 rows while
        // the writer needs 200 ms per 10 rows.
        #expect(store.mostHeld <= 20 + 4 + 2 * 10, "held \(store.mostHeld)")
        // The writer is loaded, and the claims are not cut at one write batch (the writer's second batch, the
        // one filling while the first is written, is allowed for).
        #expect(store.mostHeld > 20 + 4 + 10, "held \(store.mostHeld)")
    }

    @Test("a write the store gives up on stops the run; its results are written by the last flush, none twice")
    func failedFlush() async {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(50)) { number in
            if number == 1 { throw DatabaseError(.cannotConnect, "the database went away") }
        }
        let api = Self.api(clock: clock)
        let report = await Self.run(store: store, api: api, clock: clock)
        #expect(report.state == .failed)
        #expect("\(report.error.map { "\($0)" } ?? "")".contains("the database went away"))
        let rows = store.rows
        #expect(rows.allSatisfy { $0.state != .running }, "every row written back or released")
        let done = rows.filter { $0.state == .done }
        #expect(done.count == api.called.count, "every answered call's result was written")
        #expect(done.allSatisfy { $0.attempts == 1 }, "written once")
    }

    @Test("a write that never returns: at the stop deadline the end is recorded and the deadline handler called")
    func stopDeadline() async {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(20)) { _ in
            try await Task.sleep(for: .seconds(3600))  // hangs until cancelled
        }
        let api = Self.api(clock: clock)
        let stuck = Locked<StuckStop?>(nil)
        let report = await Self.runStopped(
            after: 20,
            store: store,
            api: api,
            clock: clock,
            configuration: Self.configuration { $0.shutdownGrace = .seconds(2) },
            onStopDeadline: { stop in stuck.withLock { $0 = stop } }
        )
        let deadline = try! #require(stuck.withLock { $0 })
        #expect(deadline.state == .interrupted && deadline.heldRows == 20)
        #expect(deadline.message.contains("did not end within the shutdown grace"))
        #expect(store.ends.first?.lastError?.contains("did not end within the shutdown grace") == true)
        #expect(report.state == .interrupted)
    }

    @Test("invalid credentials stop the run at once: no call sent, every row back to pending")
    func loginFailure() async {
        let clock = ManualClock()
        let store = MemoryRunStore(pairs: Self.pairs(25))
        let api = Self.api(clock: clock)
        let report = await Self.run(store: store, api: api, clock: clock) {
            throw NymbleAPIError(.invalidCredentials, endpoint: "login", status: 401, detail: "rejected")
        }
        #expect(report.state == .failed)
        #expect(api.called.isEmpty)
        #expect(store.rows.allSatisfy { $0.state == .pending && $0.attempts == 0 })
    }
}
