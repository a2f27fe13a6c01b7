import Logging

/// The one throttle a process shares across all its concurrent callers.
///
/// Every call first ``acquire()``s a send slot: slots are spaced at the controller's current rate (no
/// bursts beyond it), and while a pause is in force (after a 429) nobody gets one. A 429 pauses *all*
/// callers until its Retry-After (capped), or for a jittered backoff when the server gave none, and lowers
/// the rate through ``AdaptiveRateController``; accepted calls let it climb back.
public actor Throttle<C: Clock> where C.Duration == Duration {
    public struct Configuration: Sendable {
        public var controller: AdaptiveRateController<C.Instant>.Configuration
        /// Longest pause honoured from a Retry-After.
        public var maximumPause: Duration
        /// Pause when a 429 carries no usable Retry-After (the ceiling grows with consecutive events).
        public var backoff: Backoff

        public init(
            controller: AdaptiveRateController<C.Instant>.Configuration = .init(),
            maximumPause: Duration = .seconds(300),
            backoff: Backoff = Backoff(base: .milliseconds(250), cap: .seconds(10))
        ) {
            self.controller = controller
            self.maximumPause = maximumPause
            self.backoff = backoff
        }
    }

    private let clock: C
    private let configuration: Configuration
    private let logger: Logger
    private var controller: AdaptiveRateController<C.Instant>
    private var pausedUntil: C.Instant?
    private var nextSlot: C.Instant?
    private var consecutivePauses = 0
    public private(set) var throttledCount = 0

    public init(configuration: Configuration = .init(), clock: C, logger: Logger) {
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.controller = AdaptiveRateController(configuration: configuration.controller)
    }

    /// Waits for a send slot and returns the instant the call is sent (pass it back to ``throttled(sentAt:retryAfter:)``).
    public func acquire() async throws -> C.Instant {
        while true {
            let now = clock.now
            if let pausedUntil, now < pausedUntil {
                try await clock.sleep(until: pausedUntil, tolerance: nil)
                continue
            }
            guard let rate = controller.currentRate(now: now) else { return now }
            let interval = Duration.seconds(1 / rate)
            // Allow a slot to lag at most one interval behind, so an idle period does not bank a burst.
            let slot = max(nextSlot ?? now, now.advanced(by: .zero - interval))
            nextSlot = slot.advanced(by: interval)
            if slot <= now { return now }
            try await clock.sleep(until: slot, tolerance: nil)
            if let pausedUntil, clock.now < pausedUntil { continue }
            return clock.now
        }
    }

    /// The call was accepted (anything but a 429).
    public func accepted() {
        controller.recordAccepted(now: clock.now)
        consecutivePauses = 0
    }

    /// The call sent at `sentAt` was answered 429.
    public func throttled(sentAt: C.Instant, retryAfter: Duration?) {
        throttledCount += 1
        let now = clock.now
        // Sending resumed when the previous pause ended: measure what the server accepted since then.
        let activeSince = pausedUntil.flatMap { $0 < now ? $0 : nil }
        let newEvent = controller.recordThrottled(sentAt: sentAt, now: now, activeSince: activeSince)
        if newEvent { consecutivePauses += 1 }
        let pause = min(
            retryAfter ?? configuration.backoff.delay(attempt: consecutivePauses),
            configuration.maximumPause
        )
        let until = now.advanced(by: pause)
        if pausedUntil.map({ until > $0 }) ?? true { pausedUntil = until }
        if newEvent {
            logger.notice(
                "429 from the API: pausing all calls and slowing down",
                metadata: [
                    "pause": "\(pause)", "rate": "\(controller.rate.map { "\(Int($0.rounded()))/s" } ?? "unlimited")",
                    "retry_after": "\(retryAfter.map { "\($0)" } ?? "absent")",
                ]
            )
        }
    }

    /// Whether a Retry-After (or backoff) pause holds every call right now.
    public func isPaused() -> Bool { pausedUntil.map { clock.now < $0 } ?? false }

    /// The current send rate (requests per second), nil when unlimited.
    public func currentRate() -> Double? { controller.currentRate(now: clock.now) }
}
