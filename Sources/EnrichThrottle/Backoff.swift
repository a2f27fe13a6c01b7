/// Exponential backoff with full jitter (the AWS Architecture Blog's "full jitter"):
/// the n-th retry waits a uniformly random time in `0 ... min(cap, base * 2^(n-1))`.
///
/// Full jitter spreads retries of many workers that failed together, so they do not come back together.
public struct Backoff: Sendable, Hashable {
    /// The ceiling of the first retry.
    public var base: Duration
    /// No retry waits longer than this.
    public var cap: Duration

    public init(base: Duration = .milliseconds(500), cap: Duration = .seconds(60)) {
        precondition(base > .zero && cap >= base, "backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
    }

    /// The upper bound of the wait before retry number `attempt` (1-based): `min(cap, base * 2^(attempt-1))`.
    public func ceiling(attempt: Int) -> Duration {
        let exponent = max(0, min(attempt - 1, 40))
        let scaled = base.inSeconds * Double(UInt64(1) << UInt64(exponent))
        return scaled >= cap.inSeconds ? cap : .seconds(scaled)
    }

    /// A random wait in `0 ... ceiling(attempt)`.
    public func delay(attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let ceiling = ceiling(attempt: attempt).inSeconds
        return .seconds(Double.random(in: 0...ceiling, using: &generator))
    }

    /// A random wait using the system generator.
    public func delay(attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(attempt: attempt, using: &generator)
    }
}
