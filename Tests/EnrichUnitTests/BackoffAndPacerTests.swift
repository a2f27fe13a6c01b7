import EnrichThrottle
import EnrichToken
import Testing

/// A deterministic generator (SplitMix64) so jitter is repeatable.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Backoff with full jitter")
struct BackoffTests {
    @Test("the ceiling doubles per attempt and stops at the cap")
    func ceilingDoublesThenCaps() {
        let backoff = Backoff(base: .milliseconds(500), cap: .seconds(10))
        #expect(
            (1...7).map { backoff.ceiling(attempt: $0) } == [
                .milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(10), .seconds(10),
            ]
        )
        #expect(backoff.ceiling(attempt: 1000) == .seconds(10))
    }

    @Test("delays are spread over the whole range from zero to the ceiling")
    func delaysAreFullJitter() {
        let backoff = Backoff(base: .seconds(1), cap: .seconds(60))
        var generator = SeededGenerator(state: 42)
        let delays = (0..<2000).map { _ in backoff.delay(attempt: 4, using: &generator) }
        #expect(delays.allSatisfy { $0 >= .zero && $0 <= .seconds(8) })
        #expect(delays.contains { $0 < .seconds(1) }, "full jitter reaches near zero")
        #expect(delays.contains { $0 > .seconds(7) }, "and near the ceiling")
        let mean = delays.map(\.inSeconds).reduce(0, +) / Double(delays.count)
        #expect(abs(mean - 4) < 0.3, "uniform: mean is half the ceiling")
    }
}

@Suite("Login pacer")
struct LoginPacerTests {
    @Test("allows 10 logins in a minute, then the next slot is when the oldest leaves the window")
    func slidingWindow() {
        var pacer = LoginPacer<ManualClock.Instant>(limit: 10, window: .seconds(60))
        let start = ManualClock.Instant(offset: .zero)
        for second in 0..<10 {
            let now = start.advanced(by: .seconds(second))
            #expect(pacer.nextSlot(now: now) == now)
            pacer.record(now)
        }
        let now = start.advanced(by: .seconds(10))
        #expect(pacer.nextSlot(now: now) == start.advanced(by: .seconds(60)))
        #expect(pacer.count(now: now) == 10)
        let later = start.advanced(by: .seconds(60))
        #expect(pacer.nextSlot(now: later) == later, "the first login left the window")
        #expect(pacer.count(now: later) == 9)
    }
}
