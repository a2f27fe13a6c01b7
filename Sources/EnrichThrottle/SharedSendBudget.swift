/// The send budget a ``Throttle`` shares with the other workers of its fleet (over PostgreSQL in
/// production: `FleetLimiter`). With a known rate the throttle takes its send slots from blocks reserved
/// here, so the fleet as a whole keeps to the rate; a 429 anywhere pauses the whole fleet.
public protocol SharedSendBudget: Sendable {
    /// Reserves `count` consecutive send slots at `rate` per second for the whole fleet, after any pause.
    func reserve(count: Int, rate: Double) async throws -> SharedReservation
    /// Pauses every worker of the fleet for `duration` from now (a longer pause already set stands).
    func pause(for duration: Duration) async throws
    /// The fleet-wide pause still in force (zero when none).
    func pausedFor() async throws -> Duration
}

/// A block of send slots reserved for one process.
public struct SharedReservation: Sendable, Equatable {
    /// When the first slot starts, from now (negative: up to one slot in the past, to be used at once).
    public var startsIn: Duration
    /// The fleet-wide pause still in force (zero when none).
    public var pausedFor: Duration
    /// Workers of the fleet alive now (this one included): without the budget, each keeps to its share.
    public var liveWorkers: Int

    public init(startsIn: Duration, pausedFor: Duration, liveWorkers: Int) {
        self.startsIn = startsIn
        self.pausedFor = pausedFor
        self.liveWorkers = liveWorkers
    }
}
