/// Tracks how long the database has been failing, so that a short blip is retried and a long outage
/// stops the run. Pure state: the caller passes the time, which makes it testable with any clock.
public struct OutageBudget<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    /// How long failures may go on before ``recordFailure(now:)`` reports the budget spent.
    public let limit: Duration
    /// When the current run of failures began; nil while the database answers.
    public private(set) var failingSince: Instant?

    public init(limit: Duration) { self.limit = limit }

    /// A database call succeeded: the outage (if any) is over.
    public mutating func recordSuccess() { failingSince = nil }

    /// A database call failed at `now`. Returns the length of the outage once it is at or over the limit,
    /// nil while the run should keep retrying.
    public mutating func recordFailure(now: Instant) -> Duration? {
        let since = failingSince ?? now
        failingSince = since
        let outage = since.duration(to: now)
        return outage >= limit ? outage : nil
    }
}
