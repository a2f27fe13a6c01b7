import Testing

@testable import EnrichWorker

@Suite("Stall watchdog (pure)")
struct StallWatchTests {
    let second = Duration.seconds(1)

    @Test(
        "rows held, nothing settled, no API answer, nothing to wait for: stuck after the warning time, stopped at the timeout"
    )
    func stallIsWarnedOnceThenStops() {
        var watch = StallWatch(warnAfter: .seconds(3), stopAfter: .seconds(5))
        var verdicts: [StallWatch.Verdict] = []
        for _ in 0..<6 {
            verdicts.append(watch.observe(held: 10, settled: 50, answers: 70, waiting: false, interval: second))
        }
        // The first observation only sets the baseline; then 1 s, 2 s ... of stall.
        #expect(verdicts[0...2].allSatisfy { $0 == StallWatch.Verdict() })
        #expect(verdicts[3] == StallWatch.Verdict(reported: .seconds(3), warn: true, stop: false))
        #expect(verdicts[4] == StallWatch.Verdict(reported: .seconds(4), warn: false, stop: false))
        #expect(verdicts[5] == StallWatch.Verdict(reported: .seconds(5), warn: false, stop: true))
    }

    @Test("progress, API answers, an empty hand or a pause or outage to wait for are not a stall")
    func notStalls() {
        var watch = StallWatch(warnAfter: .seconds(2), stopAfter: .seconds(2))
        _ = watch.observe(held: 10, settled: 0, answers: 0, waiting: false, interval: second)
        for step in 1...10 {
            let settled = Int64(step % 2 == 0 ? step : step - 1)
            let answers = Int64(step)
            let verdict = watch.observe(held: 10, settled: settled, answers: answers, waiting: false, interval: second)
            #expect(verdict == StallWatch.Verdict(), "answers keep coming (429s retried in place)")
        }
        for _ in 0..<5 {
            #expect(watch.observe(held: 0, settled: 10, answers: 10, waiting: false, interval: second) == .init())
            #expect(watch.observe(held: 5, settled: 10, answers: 10, waiting: true, interval: second) == .init())
        }
    }

    @Test("a zero stall timeout warns but never stops")
    func zeroTimeoutNeverStops() {
        var watch = StallWatch(warnAfter: .seconds(1), stopAfter: .zero)
        let verdicts = (0..<20).map { _ in
            watch.observe(held: 3, settled: 0, answers: 0, waiting: false, interval: second)
        }
        #expect(verdicts.contains { $0.warn })
        #expect(!verdicts.contains { $0.stop })
    }
}

@Suite("Claim sizing (pure)")
struct ClaimSizerTests {
    typealias Instant = ManualClock.Instant
    func at(_ seconds: Double) -> Instant { Instant(offset: .seconds(seconds)) }

    @Test("before any measure the run holds the concurrency; then about a second of what the tasks start")
    func holdsASecondOfWork() {
        var sizer = ClaimSizer<Instant>(minimum: 32, maximum: 500, lookahead: .seconds(1))
        #expect(sizer.target(at: at(0)) == 32)
        // 100 rows a second for two seconds.
        for tick in 0..<200 { sizer.recordStarted(1, at: at(Double(tick) / 100)) }
        #expect((95...105).contains(sizer.target(at: at(2))))
        #expect(sizer.lowWatermark(at: at(2)) == sizer.target(at: at(2)) / 2)
    }

    @Test("a fast run is capped by the claim batch; a slow one never holds fewer rows than the concurrency")
    func bounds() {
        var fast = ClaimSizer<Instant>(minimum: 64, maximum: 500, lookahead: .seconds(1))
        for tick in 0..<12_000 { fast.recordStarted(1, at: at(Double(tick) / 6_000)) }
        #expect(fast.target(at: at(2)) == 500)
        var slow = ClaimSizer<Instant>(minimum: 64, maximum: 500, lookahead: .seconds(1))
        for tick in 0..<20 { slow.recordStarted(1, at: at(Double(tick) / 10)) }
        #expect(slow.target(at: at(2)) == 64)
    }
}
