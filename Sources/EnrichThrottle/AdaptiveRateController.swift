import Foundation

/// The send-rate controller behind ``Throttle``: additive-increase / multiplicative-decrease with a
/// remembered ceiling, in the spirit of the AWS SDKs' adaptive retry mode (CUBIC-like recovery).
///
/// - Before the first 429 (and without a configured ceiling) the rate is unlimited: only the concurrency
///   bounds the calls.
/// - On a 429, the rate the server actually accepted over the last second becomes the `ceiling` estimate,
///   and the send rate drops to `decrease × ceiling`. 429s for calls sent before that decrease belong to
///   the same congestion event and are ignored, so a burst of 429s cuts the rate once, not 32 times.
///   Repeated events in quick succession cut deeper (`decrease²`, ...).
/// - While below the ceiling the rate climbs back quickly (half the gap per `recoveryTime`); at or above it,
///   it probes upward slowly (`probeGrowth` per second), so it settles just under the server's unknown
///   limit instead of oscillating into 429 storms.
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
        /// Relative growth per second when probing above the ceiling.
        public var probeGrowth: Double
        /// Time to recover half of the gap to the ceiling after a decrease.
        public var recoveryTime: Duration
        /// Window over which the accepted rate is measured.
        public var measurementWindow: Duration

        public init(
            maximumRate: Double? = nil,
            minimumRate: Double = 1,
            decrease: Double = 0.9,
            probeGrowth: Double = 0.01,
            recoveryTime: Duration = .seconds(1),
            measurementWindow: Duration = .seconds(1)
        ) {
            self.maximumRate = maximumRate
            self.minimumRate = minimumRate
            self.decrease = decrease
            self.probeGrowth = probeGrowth
            self.recoveryTime = recoveryTime
            self.measurementWindow = measurementWindow
        }
    }

    public let configuration: Configuration
    /// The current send rate in requests per second; nil = unlimited.
    public private(set) var rate: Double?
    /// The accepted rate measured at the last 429.
    public private(set) var ceiling: Double?
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
    public mutating func recordAccepted(now: Instant) {
        let number = slotNumber(now)
        let index = number % slots.count
        if slots[index].number == number {
            slots[index].count += 1
        } else {
            slots[index] = (number, 1)
        }
        if let lastDecrease, lastDecrease.duration(to: now) > configuration.recoveryTime * 4 { consecutiveEvents = 0 }
    }

    /// A call sent at `sentAt` was answered 429 at `now`. Returns true when this lowered the rate (a new
    /// congestion event), false when it belongs to an event already handled.
    @discardableResult
    public mutating func recordThrottled(sentAt: Instant, now: Instant) -> Bool {
        if let lastDecrease, sentAt < lastDecrease { return false }
        grow(now: now)
        let accepted = acceptedRate(now: now)
        consecutiveEvents += 1
        let measured = max(accepted, configuration.minimumRate)
        let base = min(rate ?? measured, measured)
        ceiling = measured
        var factor = configuration.decrease
        for _ in 1..<consecutiveEvents { factor *= configuration.decrease }
        rate = clamp(base * max(factor, 0.3))
        lastDecrease = now
        lastUpdate = now
        return true
    }

    /// Calls accepted per second over the measurement window ending `now`.
    public mutating func acceptedRate(now: Instant) -> Double {
        let current = slotNumber(now)
        var total = 0
        for slot in slots where slot.number > current - slots.count && slot.number <= current { total += slot.count }
        // The current slot is only partly elapsed: divide by the time really covered.
        let slotLength = configuration.measurementWindow.secondsValue / Double(slots.count)
        let elapsedInCurrent = (origin.map { $0.duration(to: now).secondsValue } ?? 0) / slotLength - Double(current)
        let covered = (Double(slots.count - 1) + max(0, min(1, elapsedInCurrent))) * slotLength
        return Double(total) / max(covered, slotLength)
    }

    private mutating func grow(now: Instant) {
        defer { lastUpdate = now }
        guard let rate, let lastUpdate else { return }
        let elapsed = lastUpdate.duration(to: now).secondsValue
        guard elapsed > 0 else { return }
        var next = rate
        if let ceiling, rate < ceiling {
            let keep = exp2(-elapsed / configuration.recoveryTime.secondsValue)
            next = ceiling - (ceiling - rate) * keep
        } else {
            next = rate * (1 + configuration.probeGrowth * elapsed)
        }
        self.rate = clamp(next)
    }

    private func clamp(_ value: Double) -> Double {
        var value = max(value, configuration.minimumRate)
        if let maximum = configuration.maximumRate { value = min(value, maximum) }
        return value
    }

    private mutating func slotNumber(_ now: Instant) -> Int {
        let origin = self.origin ?? now
        self.origin = origin
        let slotLength = configuration.measurementWindow.secondsValue / Double(slots.count)
        return max(0, Int((origin.duration(to: now).secondsValue / slotLength).rounded(.down)))
    }
}
