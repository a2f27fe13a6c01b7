import EnrichCore
import Foundation

/// The send-rate controller behind ``Throttle``: additive-increase / multiplicative-decrease with a
/// remembered ceiling, in the spirit of the AWS SDKs' adaptive retry mode and CUBIC's plateau.
///
/// - Before the first 429 (and without a configured ceiling) the rate is unlimited: only the concurrency
///   bounds the calls.
/// - A 429 within the first half window of traffic says little: what the server let through by then was
///   its burst allowance, and the 429 may even arrive before any accepted answer. Then the controller
///   starts from that rough estimate without a ceiling and *slow-starts* (doubling every quarter of the
///   recovery time, as far as the accepted traffic backs it) until the next 429, which, sent at a known paced
///   rate, gives a ceiling to trust.
/// - On a 429 (a congestion event) the `ceiling` becomes the level that was too much: the rate the server
///   accepted over the last second when sending was unlimited; when paced, the lower of the paced rate and
///   the rate accepted since the last pause ended (time spent paused would depress the measure). The
///   send rate drops to
///   `decrease × ceiling`. 429s for calls sent before that decrease belong to the same event and are
///   ignored, so a burst of 429s cuts the rate once, not 32 times. Events in quick succession (the rate
///   is still far above the limit) cut deeper: `decrease²`, `decrease³`, ... (at most halving).
/// - Below `settle × ceiling` the rate climbs back quickly (half the gap per `recoveryTime`) and then holds
///   there, just under the limit. Only after `probeDelay` without a 429 does it probe upward: slowly at
///   first (`probeGrowth` per second), doubling the growth every 10 s of probing, so a limit that was raised
///   (or a ceiling that was underestimated) is found within a minute or two. So it settles just under the
///   server's unknown limit instead of oscillating into 429s (each of which costs a Retry-After pause).
/// - With a known `maximumRate` (`--rate`), the rate starts there and never exceeds it.
///
/// Pure state: instants are passed in, so it is tested without a clock.
public struct AdaptiveRateController<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public struct Configuration: Sendable {
        /// A known ceiling in requests per second (`--rate`); nil means unknown.
        public var maximumRate: Double?
        /// Never go below this many requests per second.
        public var minimumRate: Double
        /// Share of the measured ceiling to fall back to on a 429 (0 < decrease < 1).
        public var decrease: Double
        /// Share of the ceiling to settle at after recovering (0 < settle <= 1).
        public var settle: Double
        /// Relative growth per second when probing above the settled rate begins (doubles every 10 s).
        public var probeGrowth: Double
        /// Time without a 429 before probing above the settled rate begins.
        public var probeDelay: Duration
        /// Time to recover half of the gap to the settled rate after a decrease.
        public var recoveryTime: Duration
        /// Window over which the accepted rate is measured.
        public var measurementWindow: Duration

        public init(
            maximumRate: Double? = nil,
            minimumRate: Double = 1,
            decrease: Double = 0.9,
            settle: Double = 0.97,
            probeGrowth: Double = 0.005,
            probeDelay: Duration = .seconds(20),
            recoveryTime: Duration = .seconds(1),
            measurementWindow: Duration = .seconds(1)
        ) {
            self.maximumRate = maximumRate
            self.minimumRate = minimumRate
            self.decrease = decrease
            self.settle = settle
            self.probeGrowth = probeGrowth
            self.probeDelay = probeDelay
            self.recoveryTime = recoveryTime
            self.measurementWindow = measurementWindow
        }
    }

    public let configuration: Configuration
    /// The current send rate in requests per second; nil = unlimited.
    public private(set) var rate: Double?
    /// The level found too much at the last 429.
    public private(set) var ceiling: Double?
    /// True after an early 429 gave no ceiling to trust: grow fast until the next 429.
    public private(set) var isSlowStarting = false
    private var lastUpdate: Instant?
    private var lastDecrease: Instant?
    private var consecutiveEvents = 0
    /// Accepted calls per slot of a ring of 10 slots covering the measurement window; a slot is identified by
    /// its number (elapsed slot lengths since `origin`).
    private var slots: [(number: Int, count: Int)] = Array(repeating: (-1, 0), count: 10)
    private var origin: Instant?

    public init(configuration: Configuration = .init()) {
        self.configuration = configuration
        self.rate = configuration.maximumRate
    }

    /// The rate to send at, `now`, after applying growth since the last call.
    public mutating func currentRate(now: Instant) -> Double? {
        grow(now: now)
        return rate
    }

    /// A call was accepted (2xx or any non-429 answer).
    public mutating func recordAccepted(now: Instant) { add(1, toSlot: slotNumber(now)) }

    /// `count` calls were accepted between `start` and `now`, reported together (by the fleet's workers):
    /// spread evenly over that time, so that reports in batches measure the same rate as single calls.
    public mutating func recordAccepted(count: Int, from start: Instant, to now: Instant) {
        guard count > 0 else { return }
        let first = slotNumber(min(start, now))
        let last = slotNumber(now)
        let spanned = last - first + 1
        for offset in 0..<spanned where first + offset > last - slots.count {
            add(count * (offset + 1) / spanned - count * offset / spanned, toSlot: first + offset)
        }
    }

    private mutating func add(_ count: Int, toSlot number: Int) {
        let index = number % slots.count
        if slots[index].number == number {
            slots[index].count += count
        } else {
            slots[index] = (number, count)
        }
    }

    /// Takes over a rate and ceiling decided elsewhere (by the fleet's previous leader): holds them, and
    /// probes upward only after `probeDelay`, as after a decrease.
    public mutating func adopt(rate: Double?, ceiling: Double?, now: Instant) {
        self.rate = rate.map(clamp) ?? configuration.maximumRate
        self.ceiling = ceiling
        isSlowStarting = false
        lastDecrease = rate == nil ? nil : now
        lastUpdate = now
    }

    /// A call sent at `sentAt` was answered 429 at `now`. Returns true when this lowered the rate (a new
    /// congestion event), false when it belongs to an event already handled.
    @discardableResult
    public mutating func recordThrottled(sentAt: Instant, now: Instant, activeSince: Instant? = nil) -> Bool {
        if let lastDecrease, sentAt < lastDecrease { return false }
        grow(now: now)
        var level = rate ?? max(acceptedRate(now: now), configuration.minimumRate)
        let quarter = configuration.measurementWindow / 4
        var since = activeSince
        if isSlowStarting {
            // The rate doubles fast: only the last quarter window tells what the server accepts.
            let recent = now.advanced(by: .zero - quarter)
            since = max(since ?? recent, recent)
        }
        if rate != nil, let since, since.duration(to: now) >= quarter {
            level = max(min(level, acceptedRate(now: now, since: since)), configuration.minimumRate)
        }
        if let lastDecrease, lastDecrease.duration(to: now) > configuration.recoveryTime * 4 { consecutiveEvents = 0 }
        consecutiveEvents += 1
        if rate == nil, trafficDuration(now: now) < configuration.measurementWindow / 2 {
            // Too early to tell a rate from a burst allowance: no ceiling, slow start from the estimate.
            isSlowStarting = true
            ceiling = nil
            rate = clamp(level)
            lastDecrease = now
            lastUpdate = now
            return true
        }
        isSlowStarting = false
        ceiling = level
        let factor = pow(configuration.decrease, Double(min(consecutiveEvents, 8)))
        rate = clamp(level * max(factor, 0.5))
        lastDecrease = now
        lastUpdate = now
        return true
    }

    /// Calls accepted per second between `since` and `now` (at most the measurement window).
    public mutating func acceptedRate(now: Instant, since: Instant) -> Double {
        let seconds = since.duration(to: now).inSeconds
        let window = configuration.measurementWindow.inSeconds
        guard seconds > 0, seconds < window else { return acceptedRate(now: now) }
        let current = slotNumber(now)
        let first = slotNumber(since)
        var total = 0.0
        for slot in slots where slot.number > first && slot.number <= current { total += Double(slot.count) }
        // Of the slot holding `since`, count only the share after it (calls are assumed spread evenly).
        if let slot = slots.first(where: { $0.number == first }) {
            let start = slotPosition(since) - Double(first)
            total += Double(slot.count) * max(0, min(1, 1 - start))
        }
        return total / seconds
    }

    /// Calls accepted per second over the measurement window ending `now`.
    public mutating func acceptedRate(now: Instant) -> Double {
        let current = slotNumber(now)
        var total = 0
        for slot in slots where slot.number > current - slots.count && slot.number <= current { total += slot.count }
        // The current slot is only partly elapsed: divide by the time really covered.
        let elapsedInCurrent = slotPosition(now) - Double(current)
        let sinceOrigin = origin.map { $0.duration(to: now).inSeconds } ?? 0
        let covered = min(
            (Double(slots.count - 1) + max(0, min(1, elapsedInCurrent))) * slotLength,
            sinceOrigin
        )
        // At least one slot: a burst the server let through in the first milliseconds is no rate.
        return Double(total) / max(covered, slotLength)
    }

    private mutating func grow(now: Instant) {
        defer { lastUpdate = now }
        guard let rate, let lastUpdate else { return }
        let elapsed = lastUpdate.duration(to: now).inSeconds
        guard elapsed > 0 else { return }
        var next = rate
        let target = (ceiling ?? rate) * configuration.settle
        if isSlowStarting {
            // Grow only while calls are being accepted, and not far beyond them (the window's average lags a
            // rate that doubles every quarter second by about a third): an idle spell banks no rate.
            let doubled = rate * exp2(elapsed / (configuration.recoveryTime.inSeconds / 4))
            next = min(doubled, max(rate, 8 * acceptedRate(now: now)))
        } else if rate < target {
            let keep = exp2(-elapsed / configuration.recoveryTime.inSeconds)
            next = target - (target - rate) * keep
            // The approach is asymptotic: call it reached when within 0.5%, so that probing can begin.
            if next >= target * 0.995 { next = target }
        } else {
            // Probe only the part of `elapsed` that lies beyond the quiet period after the last decrease.
            let quiet = lastDecrease.map { $0.duration(to: now).inSeconds } ?? .infinity
            let probingFor = quiet - configuration.probeDelay.inSeconds
            let probing = min(elapsed, probingFor)
            if probing > 0 {
                let growth = min(1, configuration.probeGrowth * exp2(min(probingFor, 600) / 10))
                // Grow only as far as the traffic backs it: at most twice the ceiling or what the server is
                // accepting, so an idle hour does not end with an unbounded rate and a wave of 429s.
                let bound = 2 * max(ceiling ?? 0, acceptedRate(now: now))
                next = max(rate, min(rate * (1 + growth * probing), bound))
            }
        }
        self.rate = clamp(next)
    }

    /// The length of one slot of the acceptance ring, in seconds.
    private var slotLength: Double { configuration.measurementWindow.inSeconds / Double(slots.count) }

    /// Where `instant` falls on the slot scale: its slot number plus the fraction of that slot elapsed
    /// (0 before the first accepted call).
    private func slotPosition(_ instant: Instant) -> Double {
        (origin.map { $0.duration(to: instant).inSeconds } ?? 0) / slotLength
    }

    /// Time since the first accepted call (zero before any).
    private func trafficDuration(now: Instant) -> Duration {
        origin.map { $0.duration(to: now) } ?? .zero
    }

    private func clamp(_ value: Double) -> Double {
        var value = max(value, configuration.minimumRate)
        if let maximum = configuration.maximumRate { value = min(value, maximum) }
        return value
    }

    private mutating func slotNumber(_ now: Instant) -> Int {
        let origin = self.origin ?? now
        self.origin = origin
        return max(0, Int(slotPosition(now).rounded(.down)))
    }
}
