/// Tracks how long the database has been failing, so that a short blip is retried and a long outage
/// stops the run. Pure state: the caller passes the time, which makes it testable with any clock.
///
/// The outage is measured from the *start* of the first statement that did not succeed (the moment the
/// database stopped answering), not from when its failure was noticed: a statement that waits for a
/// connection the pool cannot open fails only at its deadline, which ``deadline(forStatementAt:minimum:)``
/// puts at the end of the budget.
public struct OutageBudget<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    /// How long failures may go on before ``recordFailure(startedAt:now:)`` reports the budget spent.
    public let limit: Duration
    /// When the current outage began (the start of its first failed statement); nil while the database
    /// answers.
    public private(set) var failingSince: Instant?

    public init(limit: Duration) { self.limit = limit }

    /// A statement succeeded: the outage (if any) is over.
    public mutating func recordSuccess() { failingSince = nil }

    /// When a statement started at `start` must end: at the end of the budget (counted from the current
    /// outage's start, or from `start`), but no sooner than `minimum` after `start`.
    public func deadline(forStatementAt start: Instant, minimum: Duration) -> Instant {
        let end = (failingSince ?? start).advanced(by: limit)
        return max(end, start.advanced(by: minimum))
    }

    /// A statement started at `startedAt` failed at `now`. Returns the length of the outage once it is at or
    /// over the limit, nil while the run should keep retrying.
    public mutating func recordFailure(startedAt: Instant, now: Instant) -> Duration? {
        let since = failingSince.map { min($0, startedAt) } ?? startedAt
        failingSince = since
        let outage = since.duration(to: now)
        return outage >= limit ? outage : nil
    }
}
