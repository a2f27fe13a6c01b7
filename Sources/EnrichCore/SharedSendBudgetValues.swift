// What a worker's throttle and the fleet's budget row (EnrichQueue.FleetLimiter) say to each other: one
// definition for both sides.

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
