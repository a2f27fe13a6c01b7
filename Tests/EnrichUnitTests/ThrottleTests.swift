import EnrichThrottle
import Logging
import Synchronization
import Testing

@Suite("Adaptive rate controller (pure)")
struct AdaptiveRateControllerTests {
    typealias Instant = ManualClock.Instant
    func at(_ seconds: Double) -> Instant { Instant(offset: .seconds(seconds)) }

    /// Records `rate` accepted calls per second between `from` and `to`.
    func accept(_ controller: inout AdaptiveRateController<Instant>, rate: Int, from: Double, to: Double) {
        var time = from
        while time < to {
            controller.recordAccepted(now: at(time))
            time += 1 / Double(rate)
        }
    }

    @Test("unlimited until the first 429, then just under the accepted rate; one cut per congestion event")
    func decreaseOnThrottle() throws {
        var controller = AdaptiveRateController<Instant>()
        let initial = controller.currentRate(now: at(0))
        #expect(initial == nil)
        accept(&controller, rate: 300, from: 0, to: 2)
        let cut = controller.recordThrottled(sentAt: at(1.999), now: at(2))
        #expect(cut)
        let measured = controller.currentRate(now: at(2))
        let rate = try #require(measured)
        #expect(abs(rate - 270) < 10, "0.9 x the ~300/s the server accepted")
        let again = controller.recordThrottled(sentAt: at(1.9995), now: at(2.001))
        #expect(!again, "same event: ignored")
        let afterRate = controller.currentRate(now: at(2.001))
        let after = try #require(afterRate)
        #expect(abs(after - rate) < 1)
    }

    @Test("recovers half the gap per recovery time to just under the ceiling, holds, then probes slowly")
    func recoveryThenProbe() throws {
        var controller = AdaptiveRateController<Instant>()
        accept(&controller, rate: 300, from: 0, to: 2)
        controller.recordThrottled(sentAt: at(2), now: at(2))
        let startRate = controller.currentRate(now: at(2))
        let start = try #require(startRate)
        let ceiling = try #require(controller.ceiling)
        let target = ceiling * 0.97
        let afterOneRate = controller.currentRate(now: at(3))
        let afterOne = try #require(afterOneRate)
        #expect(abs((target - afterOne) - (target - start) / 2) < 1)
        let heldRate = controller.currentRate(now: at(21))
        let held = try #require(heldRate)
        #expect(abs(held - target) < 1, "holds just under the ceiling for the quiet period")
        var previous = held
        for second in stride(from: 23.0, through: 27, by: 1) {
            let current = controller.currentRate(now: at(second))
            let rate = try #require(current)
            #expect(rate > previous && rate < previous * 1.01, "probes slowly at first")
            previous = rate
        }
        let laterRate = controller.currentRate(now: at(100))
        let later = try #require(laterRate)
        #expect(later > target * 2, "an underestimated ceiling is left behind within about a minute")
    }

    @Test("a 429 while paced cuts from the paced rate, not from the accepted rate that pauses depress")
    func pacedEventUsesSendRate() throws {
        var controller = AdaptiveRateController<Instant>()
        accept(&controller, rate: 300, from: 0, to: 2)
        controller.recordThrottled(sentAt: at(2), now: at(2))
        // A long pause: nothing accepted for 5 s, then a 429 on the first paced call.
        let pacedRate = controller.currentRate(now: at(7))
        let paced = try #require(pacedRate)
        controller.recordThrottled(sentAt: at(7), now: at(7))
        #expect(controller.ceiling.map { abs($0 - paced) < 0.5 } == true)
        let afterRate = controller.currentRate(now: at(7))
        let after = try #require(afterRate)
        #expect(abs(after - paced * 0.9) < 1, "not collapsed to the ~0/s accepted during the pause")
    }

    @Test("a 429 moments after the start measures the rate over the time elapsed, not over a whole window")
    func earlyThrottle() throws {
        var controller = AdaptiveRateController<Instant>()
        accept(&controller, rate: 400, from: 0, to: 0.05)  // the burst the server let through: ~20 calls
        controller.recordThrottled(sentAt: at(0.05), now: at(0.05))
        let current = controller.currentRate(now: at(0.05))
        let rate = try #require(current)
        #expect(rate > 150 && rate < 400, "20 calls in the first 50 ms: ~200/s (over at least 100 ms), not 20/s")
    }

    @Test("a 429 before any accepted answer does not collapse the rate: slow start finds the limit")
    func slowStartAfterAnEarly429() throws {
        var controller = AdaptiveRateController<Instant>()
        // 32 calls at once against a 100/s limit with a burst of 10: the first answer back is a 429.
        controller.recordThrottled(sentAt: at(0), now: at(0.002))
        #expect(controller.isSlowStarting && controller.ceiling == nil)
        // The throttle's loop against a token bucket (100/s, burst 10), with a 250 ms pause per event.
        var tokens = 10.0
        var credit = 0.0
        var pausedUntil = 0.252
        var events = 1
        var acceptedAfterFiveSeconds = 0
        for step in 1...1_000 {
            let now = 0.002 + Double(step) * 0.01
            tokens = min(10, tokens + 100 * 0.01)
            guard now >= pausedUntil else { continue }
            credit += (controller.currentRate(now: at(now)) ?? 1_000) * 0.01
            while credit >= 1 {
                credit -= 1
                if tokens >= 1 {
                    tokens -= 1
                    controller.recordAccepted(now: at(now))
                    if now >= 5 { acceptedAfterFiveSeconds += 1 }
                } else if controller.recordThrottled(sentAt: at(now), now: at(now), activeSince: at(pausedUntil)) {
                    events += 1
                    pausedUntil = now + 0.25
                    credit = 0
                }
            }
        }
        #expect(!controller.isSlowStarting && controller.ceiling != nil)
        #expect(events <= 4, "slow start ends at the first paced 429")
        #expect(acceptedAfterFiveSeconds >= 450, "settles near the limit: \(acceptedAfterFiveSeconds) of 500 in 5 s")
    }

    @Test("a 429 while paced above the limit falls to what the server accepted since the last pause")
    func pacedAboveTheLimit() throws {
        var controller = AdaptiveRateController<Instant>()
        accept(&controller, rate: 400, from: 0, to: 0.05)
        controller.recordThrottled(sentAt: at(0.05), now: at(0.05))  // overestimates: ~360/s
        // Paused until 1.05 s, then paced at ~360/s while the server accepts only 100/s.
        accept(&controller, rate: 100, from: 1.05, to: 1.6)
        controller.recordThrottled(sentAt: at(1.6), now: at(1.6), activeSince: at(1.05))
        let ceiling = try #require(controller.ceiling)
        #expect(abs(ceiling - 100) < 15, "one event finds the limit instead of ten 10% steps")
    }

    @Test("an idle hour does not grow the rate without bound: at most twice the ceiling")
    func idleGrowthIsBounded() throws {
        var controller = AdaptiveRateController<Instant>()
        accept(&controller, rate: 300, from: 0, to: 2)
        controller.recordThrottled(sentAt: at(2), now: at(2))
        let ceiling = try #require(controller.ceiling)
        for second in stride(from: 3.0, through: 3_600, by: 1) { _ = controller.currentRate(now: at(second)) }
        let current = controller.currentRate(now: at(3_600))
        let rate = try #require(current)
        #expect(rate.isFinite && rate <= ceiling * 2 + 0.001)
    }

    @Test("repeated events in quick succession cut deeper")
    func repeatedEventsCutDeeper() throws {
        var controller = AdaptiveRateController<Instant>()
        accept(&controller, rate: 200, from: 0, to: 1)
        controller.recordThrottled(sentAt: at(1), now: at(1))
        let firstRate = controller.currentRate(now: at(1))
        let first = try #require(firstRate)
        controller.recordThrottled(sentAt: at(1.1), now: at(1.1))
        let secondRate = controller.currentRate(now: at(1.1))
        let second = try #require(secondRate)
        #expect(second < first * 0.95)
    }

    @Test("a known ceiling (--rate) is the starting rate and is never exceeded")
    func knownCeiling() {
        var controller = AdaptiveRateController<Instant>(configuration: .init(maximumRate: 100))
        let initial = controller.currentRate(now: at(0))
        #expect(initial == 100)
        accept(&controller, rate: 100, from: 0, to: 5)
        let later = controller.currentRate(now: at(600))
        #expect(later == 100)
    }
}

@Suite("Throttle (manual clock)", .timeLimit(.minutes(1)))
struct ThrottleTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("a 429 with Retry-After pauses every caller until it has passed, then paces them")
    func pauseAll() async throws {
        let clock = ManualClock()
        let throttle = Throttle(clock: clock, logger: logger)
        let sent = try await throttle.acquire()
        await throttle.throttled(sentAt: sent, retryAfter: .seconds(5))
        let released = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    _ = try await throttle.acquire()
                    released.increment()
                }
            }
            await clock.waitForSleepers(4)
            clock.advance(by: .seconds(4))
            for _ in 0..<20 { await Task.yield() }
            #expect(released.value == 0, "still paused at 4 s")
            // After the pause the callers proceed, paced at the lowered rate.
            await clock.drive { released.value == 4 }
            try await group.waitForAll()
        }
        #expect(released.value == 4)
        #expect(await throttle.throttledCount == 1)
    }

    @Test("slots are spaced at the configured rate")
    func pacing() async throws {
        let clock = ManualClock()
        let throttle = Throttle(configuration: .init(controller: .init(maximumRate: 10)), clock: clock, logger: logger)
        let finished = Mutex(false)
        let times = Mutex<[Duration]>([])
        let driver = Task {
            defer { finished.withLock { $0 = true } }
            for _ in 0..<5 {
                let sent = try await throttle.acquire()
                times.withLock { $0.append(sent.offset) }
            }
        }
        await clock.drive { finished.withLock { $0 } }
        try await driver.value
        #expect(
            times.withLock { $0 } == [
                .zero, .milliseconds(100), .milliseconds(200), .milliseconds(300), .milliseconds(400),
            ]
        )
    }
}

/// A counter shared with child tasks.
final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
