import EnrichCore

/// The send budget a ``Throttle`` shares with the other workers of its fleet (over PostgreSQL in
/// production: `FleetLimiter`). With a known rate the throttle takes its send slots from blocks reserved
/// here, so the fleet as a whole keeps to the rate; a 429 anywhere pauses the whole fleet. Without a known
/// rate, one worker at a time leads: it measures the calls the whole fleet reports accepted and sets the
/// fleet's rate, which the others read here.
public protocol SharedSendBudget: Sendable {
    /// Reserves `count` consecutive send slots at `rate` per second for the whole fleet, after any pause,
    /// reporting the calls this worker had accepted since it last reported.
    func reserve(count: Int, rate: Double, accepted: Int64) async throws -> SharedReservation
    /// Pauses every worker of the fleet for `duration` from now (a longer pause already set stands); a pause
    /// set while none is in force is a new congestion event. Returns the fleet's events so far.
    func pause(for duration: Duration) async throws -> Int64
    /// The fleet-wide pause still in force, the fleet's congestion events so far and its shared rate,
    /// reporting the calls this worker had accepted since it last reported.
    func pause(accepted: Int64) async throws -> SharedPause
    /// Calls `onPause` for every pause a worker of the fleet announces, as it happens, until cancelled.
    func listenForPauses(_ onPause: @escaping @Sendable (SharedPause) -> Void) async throws
    /// Takes or keeps the lead of the fleet's adaptive rate (a lease of a few seconds); while already
    /// leading, stores `rate` and `ceiling` as the fleet's. Nil when another worker leads.
    func lead(rate: Double?, ceiling: Double?) async throws -> SharedLead?
}
