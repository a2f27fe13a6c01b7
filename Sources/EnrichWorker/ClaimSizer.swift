import EnrichCore

/// How many rows to keep claimed: what the worker tasks start in `lookahead`, at least `minimum` (the
/// concurrency, so that every task has a row) and at most `maximum` (the claim batch). Pure: the caller
/// passes the time.
struct ClaimSizer<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    let minimum: Int
    let maximum: Int
    let lookahead: Duration
    /// Rows started in the current and the previous measuring window.
    private var window: (start: Instant, count: Int)?
    private var previousRate: Double = 0

    init(minimum: Int, maximum: Int, lookahead: Duration) {
        self.minimum = max(1, min(minimum, maximum))
        self.maximum = maximum
        self.lookahead = lookahead
    }

    mutating func recordStarted(_ count: Int, at now: Instant) {
        guard var current = window else {
            window = (now, count)
            return
        }
        let elapsed = current.start.duration(to: now)
        if elapsed >= lookahead {
            previousRate = Double(current.count) / elapsed.inSeconds
            current = (now, 0)
        }
        current.count += count
        window = current
    }

    /// Rows to hold claimed now.
    func target(at now: Instant) -> Int {
        var rate = previousRate
        if let window {
            let elapsed = window.start.duration(to: now)
            if elapsed >= .milliseconds(250) { rate = max(rate, Double(window.count) / elapsed.inSeconds) }
        }
        let wanted = Int((rate * lookahead.inSeconds).rounded(.up))
        return min(maximum, max(minimum, wanted))
    }

    /// Claim again when fewer rows than this are left: half the target.
    func lowWatermark(at now: Instant) -> Int { max(1, target(at: now) / 2) }
}
