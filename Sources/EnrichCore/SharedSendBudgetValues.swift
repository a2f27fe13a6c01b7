// What a worker's throttle and the fleet's budget row (EnrichQueue.FleetLimiter) say to each other: one
// definition for both sides.

/// The fleet-wide pause as one worker reads it.
public struct SharedPause: Sendable, Equatable {
    /// How long the pause still holds (zero when none).
    public var pausedFor: Duration
    /// Congestion events so far: the fleet slows down once for each, whichever worker met its 429.
    public var events: Int64
    /// The fleet's adaptive rate as its leader set it (nil: unlimited, or no leader alive).
    public var rate: Double?
    /// Whether a worker holds the lead of the adaptive rate now.
    public var hasLeader: Bool

    public init(pausedFor: Duration, events: Int64, rate: Double? = nil, hasLeader: Bool = false) {
        self.pausedFor = pausedFor
        self.events = events
        self.rate = rate
        self.hasLeader = hasLeader
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
    /// The fleet's adaptive rate as its leader set it (nil: unlimited, or no leader alive).
    public var rate: Double?
    /// Whether a worker holds the lead of the adaptive rate now.
    public var hasLeader: Bool

    public init(
        startsIn: Duration,
        pausedFor: Duration,
        liveWorkers: Int,
        pauseEvents: Int64,
        rate: Double? = nil,
        hasLeader: Bool = false
    ) {
        self.startsIn = startsIn
        self.pausedFor = pausedFor
        self.liveWorkers = liveWorkers
        self.pauseEvents = pauseEvents
        self.rate = rate
        self.hasLeader = hasLeader
    }
}

/// What the leader of a fleet's adaptive rate reads from the budget row at each of its turns.
public struct SharedLead: Sendable, Equatable {
    /// False when this worker has just become the leader: it adopts `rate` and `ceiling` (or starts afresh
    /// when `stale`) rather than write a rate of its own.
    public var continued: Bool
    /// The fleet had no leader for a long time (no fleet was running): the stored rate says nothing of today.
    public var stale: Bool
    /// Calls the fleet's workers have reported accepted, in total (the leader measures the differences).
    public var accepted: Int64
    /// Congestion events so far.
    public var events: Int64
    /// The fleet-wide pause still in force (zero when none).
    public var pausedFor: Duration
    /// The shared rate and ceiling now stored (after this turn's write).
    public var rate: Double?
    public var ceiling: Double?

    public init(
        continued: Bool,
        stale: Bool,
        accepted: Int64,
        events: Int64,
        pausedFor: Duration,
        rate: Double?,
        ceiling: Double?
    ) {
        self.continued = continued
        self.stale = stale
        self.accepted = accepted
        self.events = events
        self.pausedFor = pausedFor
        self.rate = rate
        self.ceiling = ceiling
    }
}
