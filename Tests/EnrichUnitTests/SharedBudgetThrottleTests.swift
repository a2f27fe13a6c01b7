import EnrichCore
import Logging
import Synchronization
import Testing

@testable import EnrichThrottle

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
            var accepted: Int64 = 0
            var rate: Double?
            var ceiling: Double?
            var leader: String?
            var leaderUntil: ManualClock.Instant?
            var furthestStart: Duration = .zero
        }

        private let clock: ManualClock
        private let state = Mutex(State())
        let liveWorkers: Int
        /// How long a reservation takes to come back (a slow database).
        let latency: Duration

        init(clock: ManualClock, liveWorkers: Int = 1, latency: Duration = .zero) {
            self.clock = clock
            self.liveWorkers = liveWorkers
            self.latency = latency
        }

        var reservations: Int { state.withLock { $0.reservations } }
        /// The furthest ahead of its time a reservation started.
        var furthestStart: Duration { state.withLock { $0.furthestStart } }
        func fail(_ failing: Bool) { state.withLock { $0.failing = failing } }

        /// The rate as workers follow it (the lead is held by a budget's owner).
        var sharedRate: Double? { state.withLock { $0.rate } }
        var leader: String? { state.withLock { $0.leader } }
        var accepted: Int64 { state.withLock { $0.accepted } }

        func reserve(count: Int, rate: Double, accepted: Int64) async throws -> SharedReservation {
            if latency > .zero { try await clock.sleep(for: latency) }
            let now = clock.now
            return try state.withLock { state in
                if state.failing { throw CancellationError() }
                state.accepted += accepted
                var start = max(state.tat ?? now, now.advanced(by: .seconds(-1 / rate)))
                if let paused = state.pausedUntil { start = max(start, paused) }
                state.tat = start.advanced(by: .seconds(Double(count) / rate))
                state.reservations += 1
                state.furthestStart = max(state.furthestStart, now.duration(to: start))
                let paused = state.pausedUntil.map { max(now.duration(to: $0), .zero) } ?? .zero
                return SharedReservation(
                    startsIn: now.duration(to: start),
                    pausedFor: paused,
                    liveWorkers: liveWorkers,
                    pauseEvents: state.events,
                    rate: state.rate,
                    hasLeader: state.leaderUntil.map { $0 >= now } ?? false
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

        func pause(accepted: Int64) async throws -> SharedPause {
            let now = clock.now
            return try state.withLock {
                if $0.failing { throw CancellationError() }
                $0.accepted += accepted
                return SharedPause(
                    pausedFor: $0.pausedUntil.map { max(now.duration(to: $0), .zero) } ?? .zero,
                    events: $0.events,
                    rate: $0.rate,
                    hasLeader: $0.leaderUntil.map { $0 >= now } ?? false
                )
            }
        }

        func pause() async throws -> SharedPause { try await pause(accepted: 0) }

        /// Calls accepted by workers not under test, as they report them.
        func report(accepted: Int64) { state.withLock { $0.accepted += accepted } }

        /// The lead as `FleetLimiter.lead` takes it, for the owner `owner`.
        func lead(owner: String, rate: Double?, ceiling: Double?) throws -> SharedLead? {
            let now = clock.now
            return try state.withLock { state in
                if state.failing { throw CancellationError() }
                let free = state.leader == nil || state.leaderUntil.map { $0 < now } ?? true
                guard state.leader == owner || free else { return nil }
                let continued = state.leader == owner
                if continued {
                    state.rate = rate
                    state.ceiling = ceiling
                }
                state.leader = owner
                state.leaderUntil = now.advanced(by: .seconds(2))
                return SharedLead(
                    continued: continued,
                    stale: false,
                    accepted: state.accepted,
                    events: state.events,
                    pausedFor: state.pausedUntil.map { max(now.duration(to: $0), .zero) } ?? .zero,
                    rate: state.rate,
                    ceiling: state.ceiling
                )
            }
        }

        func lead(rate: Double?, ceiling: Double?) async throws -> SharedLead? {
            try lead(owner: "worker", rate: rate, ceiling: ceiling)
        }

        /// One worker's view of the budget: the same row, its own lead owner.
        struct Worker: SharedSendBudget {
            let budget: MemoryBudget
            let owner: String
            func reserve(count: Int, rate: Double, accepted: Int64) async throws -> SharedReservation {
                try await budget.reserve(count: count, rate: rate, accepted: accepted)
            }
            func pause(for duration: Duration) async throws -> Int64 { try await budget.pause(for: duration) }
            func pause(accepted: Int64) async throws -> SharedPause { try await budget.pause(accepted: accepted) }
            func listenForPauses(_ onPause: @escaping @Sendable (SharedPause) -> Void) async throws {
                try await budget.listenForPauses(onPause)
            }
            func lead(rate: Double?, ceiling: Double?) async throws -> SharedLead? {
                try budget.lead(owner: owner, rate: rate, ceiling: ceiling)
            }
        }

        func worker(_ owner: String) -> Worker { Worker(budget: self, owner: owner) }
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
                let total = count * throttles.count
                // Every caller is parked when each one is done, asleep on the clock (for its slot, or for a
                // reservation's round trip), or waiting inside a throttle for another caller's round trip to the
                // budget. Read in the order callers cannot go back on (done, asleep, waiting): one that moves
                // between two reads is then missed, never counted twice.
                await clock.drive(until: { finished.withLock { $0 } == total }) {
                    let done = finished.withLock { $0 }
                    let asleep = clock.sleeperCount
                    var waiting = 0
                    for throttle in throttles { waiting += await throttle.budgetWaiterCount }
                    if done + asleep + waiting > total {
                        Issue.record("something other than the callers sleeps on the clock or waits in a throttle")
                    }
                    return done + asleep + waiting == total
                }
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

    @Test(
        "a slow budget (reservations taking half a second): three workers still send the fleet's 60/s, never more",
        arguments: [1, 3]
    )
    func slowBudget(workers: Int) async {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock, liveWorkers: workers, latency: .milliseconds(500))
        let throttles = (0..<workers).map { _ in Self.throttle(clock, budget, rate: 60) }
        let sent = await Self.acquire(360 / workers, from: throttles, clock: clock)
        let span = sent.first!.duration(to: sent.last!)
        // Blocks of a tenth of a second, one per round trip, gave each worker 12 sends a second: 360 sends took
        // 10 s with three workers and 30 s with one.
        #expect(span <= .milliseconds(7_500), "360 sends at a fleet rate of 60/s took \(span)")
        for (earlier, later) in zip(sent, sent.dropFirst(61)) {
            #expect(earlier.duration(to: later) >= .milliseconds(990), "never more than the rate in a second")
        }
    }

    @Test("at a low rate, 16 callers do not book the fleet's future: a worker holds two blocks ahead at most")
    func noBookingAhead() async {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock)
        let throttle = Self.throttle(clock, budget, rate: 2)
        let sent = await Self.acquire(16, from: [throttle], clock: clock)
        let span = sent.first!.duration(to: sent.last!)
        #expect(span >= .milliseconds(7_400) && span <= .milliseconds(8_000), "16 sends at 2/s took \(span)")
        // At 2/s a block is one slot, half a second: two blocks ahead at most (16 callers alone: 7.5 s).
        #expect(budget.furthestStart <= .milliseconds(1_000), "booked \(budget.furthestStart) ahead")
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

    @Test(
        "an adaptive fleet has one leader: a 429 cuts the fleet's rate once from fleet-wide counts, every worker follows it, it climbs back once for all, and a new leader takes over"
    )
    func oneLeaderForTheFleet() async throws {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock, liveWorkers: 2)
        func worker(_ name: String) -> Throttle<ManualClock> {
            Throttle(clock: clock, logger: Self.quiet, budget: budget.worker(name))
        }
        let (first, second) = (worker("first"), worker("second"))
        /// The fleet accepts `rate` calls per second for `seconds`, reported every tenth of a second.
        func traffic(_ rate: Double, for seconds: Double, sleepers: Int) async {
            for _ in 0..<Int(seconds * 10) {
                budget.report(accepted: Int64(rate / 10))
                clock.advance(by: .milliseconds(100))
                await clock.waitForSleepers(sleepers)
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            let firstLeads = Task { await first.leadFleet() }
            await clock.waitForSleepers(1)
            group.addTask { await second.leadFleet() }
            await clock.waitForSleepers(2)
            #expect(budget.leader == "first" && budget.sharedRate == nil, "one leader; unlimited before any 429")
            let (firstLeading, secondLeading) = (await first.isLeadingFleet(), await second.isLeadingFleet())
            #expect(firstLeading && !secondLeading)

            await traffic(200, for: 2, sleepers: 2)
            let sentAt = clock.now
            await first.throttled(sentAt: sentAt, retryAfter: .seconds(1))
            await second.throttled(sentAt: sentAt, retryAfter: .seconds(1))
            let cut = try #require(budget.sharedRate, "the leader set the fleet's rate at the 429")
            #expect(cut > 150 && cut < 200, "cut once from the fleet's 200/s, not this worker's share: \(cut)")
            #expect(try await budget.pause().events == 1, "two workers' 429s, one congestion event")
            await traffic(0, for: 1, sleepers: 2)  // the pause
            #expect(try #require(budget.sharedRate) >= cut, "no second cut for the same event")

            await traffic(cut, for: 3, sleepers: 2)
            let raised = try #require(budget.sharedRate)
            #expect(
                raised > cut * 1.03,
                "the leader raised the fleet's rate back toward its ceiling: \(cut) → \(raised)"
            )
            _ = try await second.acquire()
            #expect(await second.currentRate() == raised, "a follower sends at the leader's rate")

            firstLeads.cancel()
            await firstLeads.value
            await traffic(raised, for: 3.5, sleepers: 1)
            #expect(budget.leader == "second", "the lead passes on when its lease runs out")
            #expect(await second.isLeadingFleet())
            let adopted = try #require(budget.sharedRate)
            #expect(
                abs(adopted - raised) < raised * 0.05,
                "the new leader goes on from the fleet's rate: \(raised) → \(adopted)"
            )
            group.cancelAll()
        }
    }

    @Test(
        "a 429 soon after the fleet's budget came back (a database outage) cuts the fleet's rate from that rate, not from the calls the outage stalled",
        arguments: [0.3, 0.6, 1.5]
    )
    func outageDoesNotCollapseTheRate(secondsAfter: Double) async throws {
        let clock = ManualClock()
        let budget = MemoryBudget(clock: clock)
        let leader = Throttle(clock: clock, logger: Self.quiet, budget: budget.worker("leader"))
        /// The fleet accepts `rate` calls per second for `seconds`, reported every tenth of a second.
        func traffic(_ rate: Double, for seconds: Double) async {
            for _ in 0..<Int(seconds * 10) {
                budget.report(accepted: Int64(rate / 10))
                clock.advance(by: .milliseconds(100))
                await clock.waitForSleepers(1)
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await leader.leadFleet() }
            await clock.waitForSleepers(1)
            await traffic(200, for: 2)
            await leader.throttled(sentAt: clock.now, retryAfter: .seconds(1))
            let cut = try #require(budget.sharedRate)
            await traffic(0, for: 1)  // the pause
            await traffic(cut, for: 5)
            let before = try #require(budget.sharedRate)
            // The database is away for 8 s: the budget cannot be reached, and no call is accepted.
            budget.fail(true)
            await traffic(0, for: 8)
            budget.fail(false)
            // The leader's next turn reaches the budget again; calls pick up slowly (none counted yet).
            await traffic(0, for: secondsAfter)
            await leader.throttled(sentAt: clock.now, retryAfter: .seconds(1))
            let after = try #require(budget.sharedRate)
            #expect(after < before, "the 429 still cuts: \(before) → \(after)")
            #expect(
                after >= before * 0.5,
                "cut from the rate the fleet had, not from what it accepted while the database was away: \(before) → \(after)"
            )
            group.cancelAll()
        }
    }

    typealias Instant = ManualClock.Instant
}
