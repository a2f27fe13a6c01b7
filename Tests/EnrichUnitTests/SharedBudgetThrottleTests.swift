import EnrichCore
import EnrichThrottle
import Logging
import Synchronization
import Testing

/// ``Throttle`` with a fleet's ``SharedSendBudget``: the budget here is an in-memory GCRA on the test's manual
/// clock (the PostgreSQL one is proven in the integration suite), so the sharing logic runs in milliseconds.
@Suite("Throttle with a shared send budget (in-memory budget, manual clock)", .timeLimit(.minutes(1)))
struct SharedBudgetThrottleTests {
    static let quiet = Logger(label: "quiet", factory: { _ in SwiftLogNoOpLogHandler() })

    /// GCRA over `clock`, like `FleetLimiter`'s statement.
    final class MemoryBudget: SharedSendBudget {
        private struct State {
            var tat: ManualClock.Instant?
            var pausedUntil: ManualClock.Instant?
            var failing = false
            var reservations = 0
            var events: Int64 = 0
        }

        private let clock: ManualClock
        private let state = Mutex(State())
        let liveWorkers: Int

        init(clock: ManualClock, liveWorkers: Int = 1) {
            self.clock = clock
            self.liveWorkers = liveWorkers
        }

        var reservations: Int { state.withLock { $0.reservations } }
        func fail(_ failing: Bool) { state.withLock { $0.failing = failing } }

        func reserve(count: Int, rate: Double) async throws -> SharedReservation {
            let now = clock.now
            return try state.withLock { state in
                if state.failing { throw CancellationError() }
                var start = max(state.tat ?? now, now.advanced(by: .seconds(-1 / rate)))
                if let paused = state.pausedUntil { start = max(start, paused) }
                state.tat = start.advanced(by: .seconds(Double(count) / rate))
                state.reservations += 1
                let paused = state.pausedUntil.map { max(now.duration(to: $0), .zero) } ?? .zero
                return SharedReservation(
                    startsIn: now.duration(to: start),
                    pausedFor: paused,
                    liveWorkers: liveWorkers,
                    pauseEvents: state.events
                )
            }
        }

        func pause(for duration: Duration) async throws -> Int64 {
            let now = clock.now
            let until = now.advanced(by: duration)
            return state.withLock { state in
                if (state.pausedUntil ?? now) <= now { state.events += 1 }
                state.pausedUntil = max(state.pausedUntil ?? until, until)
                return state.events
            }
        }

        func listenForPauses(_ onPause: @escaping @Sendable (SharedPause) -> Void) async throws {
            try await clock.sleep(for: .seconds(86_400))
        }

        func pause() async throws -> SharedPause {
            let now = clock.now
            return state.withLock {
                SharedPause(
                    pausedFor: $0.pausedUntil.map { max(now.duration(to: $0), .zero) } ?? .zero,
                    events: $0.events
                )
            }
        }
    }

    static func throttle(_ clock: ManualClock, _ budget: MemoryBudget, rate: Double?) -> Throttle<ManualClock> {
        Throttle(
            configuration: .init(controller: .init(maximumRate: rate)),
            clock: clock,
            logger: quiet,
            budget: budget
        )
    }

    /// Acquires `count` slots from each throttle on as many tasks, driving the clock; returns the send instants.
    static func acquire(
        _ count: Int,
        from throttles: [Throttle<ManualClock>],
        clock: ManualClock
    ) async -> [ManualClock.Instant] {
        let finished = Locked(0)
        return await withTaskGroup(of: [ManualClock.Instant].self) { group in
            for throttle in throttles {
                for _ in 0..<count {
                    group.addTask {
                        let at = (try? await throttle.acquire()) ?? clock.now
                        finished.withLock { $0 += 1 }
                        return [at]
                    }
                }
            }
            group.addTask {
                await clock.drive { finished.withLock { $0 } == count * throttles.count }
                return []
            }
            var instants: [ManualClock.Instant] = []
            for await batch in group { instants += batch }
            return instants.sorted()
        }
    }

    @Test("two workers at a fleet rate of 10/s share it: 40 sends span 4 s, in blocks of a tenth of a second")
    func fleetRateShared() async {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock, liveWorkers: 2)
        let throttles = [Self.throttle(clock, budget, rate: 10), Self.throttle(clock, budget, rate: 10)]
        let sent = await Self.acquire(20, from: throttles, clock: clock)
        let span = sent.first!.duration(to: sent.last!)
        #expect(span >= .milliseconds(3_800), "40 sends at 10/s for the fleet took \(span)")
        #expect(span <= .milliseconds(4_200))
        #expect(budget.reservations == 40, "one slot per block at 10/s (a tenth of a second)")
        for (earlier, later) in zip(sent, sent.dropFirst(2)) {
            #expect(earlier.duration(to: later) >= .milliseconds(190), "never two sends closer than the rate allows")
        }
    }

    @Test("a fleet pause holds every send of a worker that did not see the 429 itself")
    func pauseFromTheFleet() async throws {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock)
        let paced = Self.throttle(clock, budget, rate: 10)
        let adaptive = Self.throttle(clock, budget, rate: nil)
        try await budget.pause(for: .seconds(5))
        let sent = await Self.acquire(3, from: [paced, adaptive], clock: clock)
        #expect(sent.allSatisfy { $0 >= Instant(offset: .seconds(5)) }, "\(sent)")
    }

    @Test("a 429 seen by one worker pauses the others through the budget")
    func pauseSharedOnThrottle() async throws {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock)
        let first = Self.throttle(clock, budget, rate: nil)
        let second = Self.throttle(clock, budget, rate: nil)
        let sentAt = try await first.acquire()
        await first.throttled(sentAt: sentAt, retryAfter: .seconds(3))
        #expect(try await budget.pause() == SharedPause(pausedFor: .seconds(3), events: 1))
        let sent = await Self.acquire(1, from: [second], clock: clock)
        #expect(sent.allSatisfy { $0 >= Instant(offset: .seconds(3)) }, "\(sent)")
    }

    @Test("a congestion event met by one worker slows the others once, however many 429s it took")
    func oneCutPerFleetEvent() async throws {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock, liveWorkers: 2)
        let first = Self.throttle(clock, budget, rate: 100)
        let second = Self.throttle(clock, budget, rate: 100)
        _ = await Self.acquire(50, from: [first, second], clock: clock)
        // The first worker meets five 429s of one event; the second none.
        let sentAt = clock.now
        for _ in 0..<5 { await first.throttled(sentAt: sentAt, retryAfter: .milliseconds(500)) }
        #expect(try await budget.pause().events == 1)
        let firstRate = try #require(await first.currentRate())
        _ = await Self.acquire(1, from: [second], clock: clock)
        let secondRate = try #require(await second.currentRate())
        #expect(firstRate < 100 && secondRate < 100, "both slowed down: \(firstRate), \(secondRate)")
        #expect(secondRate >= 100 * 0.5, "once, not once per 429: \(secondRate)")
        // Nothing new: no further cut.
        clock.advance(by: .seconds(1))
        _ = await Self.acquire(2, from: [second], clock: clock)
        let later = try #require(await second.currentRate())
        #expect(later >= secondRate, "no second cut without a new event")
    }

    @Test("a pause announced by the fleet (NOTIFY) holds every call until it ends and slows down once")
    func announcedPause() async throws {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock)
        let throttle = Self.throttle(clock, budget, rate: 100)
        _ = await Self.acquire(20, from: [throttle], clock: clock)
        let before = try #require(await throttle.currentRate())
        await throttle.fleetPaused(SharedPause(pausedFor: .seconds(2), events: 1))
        let pausedAt = clock.now
        let sent = await Self.acquire(3, from: [throttle], clock: clock)
        #expect(sent.allSatisfy { $0 >= pausedAt.advanced(by: .seconds(2)) }, "\(sent)")
        let after = try #require(await throttle.currentRate())
        #expect(after < before, "slowed down for the new event: \(before) → \(after)")
        await throttle.fleetPaused(SharedPause(pausedFor: .zero, events: 1))
        #expect(try #require(await throttle.currentRate()) == after, "the same event twice: one cut")
    }

    @Test("without the budget a worker keeps to its share of the fleet's rate (rate / live workers)")
    func fallbackShare() async {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock, liveWorkers: 4)
        let throttle = Self.throttle(clock, budget, rate: 20)
        _ = await Self.acquire(1, from: [throttle], clock: clock)
        budget.fail(true)
        let sent = await Self.acquire(21, from: [throttle], clock: clock)
        let span = sent.first!.duration(to: sent.last!)
        // 20/s shared by 4 workers: 5/s for this one, so 21 sends span 4 s.
        #expect(span >= .milliseconds(3_800) && span <= .milliseconds(4_400), "21 sends took \(span)")
    }

    typealias Instant = ManualClock.Instant
}
