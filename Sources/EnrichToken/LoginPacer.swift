/// A sliding-window limit on logins: at most `limit` in any `window` (the vendor allows 10 per minute per
/// ClientId). Pure state: the caller passes the time in, so it is tested without a clock.
public struct LoginPacer<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public let limit: Int
    public let window: Duration
    private var recent: [Instant] = []

    public init(limit: Int = 10, window: Duration = .seconds(60)) {
        precondition(limit >= 1 && window > .zero)
        self.limit = limit
        self.window = window
    }

    /// When the next login may be sent: `now` if a slot is free, else when the oldest login in the window
    /// leaves it.
    public mutating func nextSlot(now: Instant) -> Instant {
        recent.removeAll { $0.advanced(by: window) <= now }
        guard recent.count >= limit else { return now }
        return recent[recent.count - limit].advanced(by: window)
    }

    /// Records a login sent at `instant`.
    public mutating func record(_ instant: Instant) {
        recent.append(instant)
        if recent.count > limit * 2 { recent.removeFirst(recent.count - limit) }
    }

    /// Logins sent in the window ending at `now`.
    public func count(now: Instant) -> Int {
        recent.filter { $0.advanced(by: window) > now }.count
    }
}
