/// The send budget a ``Throttle`` shares with the other workers of its fleet (over PostgreSQL in
/// production: `FleetLimiter`). With a known rate the throttle takes its send slots from blocks reserved
/// here, so the fleet as a whole keeps to the rate; a 429 anywhere pauses the whole fleet.
public protocol SharedSendBudget: Sendable {
    /// Reserves `count` consecutive send slots at `rate` per second for the whole fleet, after any pause.
    func reserve(count: Int, rate: Double) async throws -> SharedReservation
    /// Pauses every worker of the fleet for `duration` from now (a longer pause already set stands); a pause
    /// set while none is in force is a new congestion event. Returns the fleet's events so far.
    func pause(for duration: Duration) async throws -> Int64
    /// The fleet-wide pause still in force and the fleet's congestion events so far.
    func pause() async throws -> SharedPause
    /// Calls `onPause` for every pause a worker of the fleet announces, as it happens, until cancelled.
    func listenForPauses(_ onPause: @escaping @Sendable (SharedPause) -> Void) async throws
}

/// The fleet-wide pause as one worker reads it.
public struct SharedPause: Sendable, Equatable {
    /// How long the pause still holds (zero when none).
    public var pausedFor: Duration
    /// Congestion events so far: a worker slows down once for each, whichever worker met its 429.
    public var events: Int64

    public init(pausedFor: Duration, events: Int64) {
        self.pausedFor = pausedFor
        self.events = events
    }
}

/// A block of send slots reserved for one process.
public struct SharedReservation: Sendable, Equatable {
    /// When the first slot starts, from now (negative: up to one slot in the past, to be used at once).
    public var startsIn: Duration
    /// The fleet-wide pause still in force (zero when none).
    public var pausedFor: Duration
    /// Workers of the fleet alive now (this one included): without the budget, each keeps to its share.
    public var liveWorkers: Int
    /// The fleet's congestion events so far.
    public var pauseEvents: Int64

    public init(startsIn: Duration, pausedFor: Duration, liveWorkers: Int, pauseEvents: Int64) {
        self.startsIn = startsIn
        self.pausedFor = pausedFor
        self.liveWorkers = liveWorkers
        self.pauseEvents = pauseEvents
    }
}
