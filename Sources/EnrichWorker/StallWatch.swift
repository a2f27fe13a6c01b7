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
