import EnrichCore
import Logging

/// The one throttle a process shares across all its concurrent callers.
///
/// Every call first ``acquire()``s a send slot: slots are spaced at the controller's current rate (no
/// bursts beyond it), and while a pause is in force (after a 429) nobody gets one. A 429 pauses *all*
/// callers until its Retry-After (capped), or for a jittered backoff when the server gave none, and lowers
/// the rate through ``AdaptiveRateController``; accepted calls let it climb back.
///
/// In a fleet (a ``SharedSendBudget``), a known rate is the fleet's: send slots come from blocks reserved
/// for the whole fleet (about a tenth of a second of the rate each), a 429 pauses the fleet, and without a
/// known rate the throttle learns other workers' pauses every quarter second. When the budget cannot be
/// reached, a worker keeps to its share of the rate (the rate over the live workers last seen).
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

    private let budget: (any SharedSendBudget)?
    /// Send slots reserved for this process from the fleet's budget.
    private var block: (next: C.Instant, interval: Duration, remaining: Int)?
    private var consultingBudget = false
    private var budgetWaiters: [CheckedContinuation<Void, Never>] = []
    /// Live workers when the budget last answered: the share to keep to without it.
    private var fleetSize = 1
    private var budgetFailing = false
    /// While the budget fails, when to try it again (until then, blocks at this worker's share).
    private var budgetRetryAt: C.Instant?
    private var lastPauseCheck: C.Instant?
    /// The fleet's congestion events this worker has slowed down for (nil: none seen yet).
    private var seenPauseEvents: Int64?

    /// - Parameter budget: the fleet's shared budget; nil for a process on its own.
    public init(configuration: Configuration = .init(), clock: C, logger: Logger, budget: (any SharedSendBudget)? = nil)
    {
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.controller = AdaptiveRateController(configuration: configuration.controller)
        self.budget = budget
    }

    /// Waits for a send slot and returns the instant the call is sent (pass it back to ``throttled(sentAt:retryAfter:)``).
    public func acquire() async throws -> C.Instant {
        if let budget, configuration.controller.maximumRate != nil { return try await acquireShared(budget) }
        while true {
            let now = clock.now
            if let pausedUntil, now < pausedUntil {
                try await clock.sleep(until: pausedUntil, tolerance: nil)
                continue
            }
            if budget != nil && consultingBudget {
                await withCheckedContinuation { budgetWaiters.append($0) }
                continue
            }
            if let budget, lastPauseCheck.map({ $0.duration(to: now) >= .milliseconds(250) }) ?? true,
                budgetRetryAt.map({ now >= $0 }) ?? true
            {
                // One look at the fleet's pause at a time; the other callers wait for it (at most a second).
                lastPauseCheck = now
                consultingBudget = true
                do {
                    let pause = try await budget.pause()
                    budgetRetryAt = nil
                    observeFleet(events: pause.events)
                    if pause.pausedFor > .zero { extendPause(until: clock.now.advanced(by: pause.pausedFor)) }
                } catch {
                    budgetRetryAt = clock.now.advanced(by: .seconds(1))
                }
                finishConsultingBudget()
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

    /// A send slot from the fleet's reserved blocks (known rate in a fleet).
    private func acquireShared(_ budget: any SharedSendBudget) async throws -> C.Instant {
        while true {
            try Task.checkCancellation()
            let now = clock.now
            if let pausedUntil, now < pausedUntil {
                try await clock.sleep(until: pausedUntil, tolerance: nil)
                continue
            }
            if var current = block, current.remaining > 0 {
                // Slots more than one interval in the past went unused (the process was idle): drop them
                // rather than send a burst.
                let late = current.next.duration(to: now) - current.interval
                if late > .zero {
                    let skipped = Int((late / current.interval).rounded(.up))
                    current.next = current.next.advanced(by: current.interval * skipped)
                    current.remaining -= skipped
                    if current.remaining <= 0 {
                        block = nil
                        continue
                    }
                }
                let slot = current.next
                current.next = slot.advanced(by: current.interval)
                current.remaining -= 1
                block = current
                if slot > now { try await clock.sleep(until: slot, tolerance: nil) }
                if let pausedUntil, clock.now < pausedUntil { continue }
                return clock.now
            }
            if consultingBudget {
                await withCheckedContinuation { budgetWaiters.append($0) }
                continue
            }
            await reserve(from: budget)
        }
    }

    /// Reserves the next block of slots; without the budget, takes a block at this worker's share of the rate.
    private func reserve(from budget: any SharedSendBudget) async {
        consultingBudget = true
        defer { finishConsultingBudget() }
        let rate = controller.currentRate(now: clock.now) ?? configuration.controller.maximumRate ?? 1
        let count = max(1, min(Int((rate / 10).rounded(.up)), 256))
        let interval = Duration.seconds(1 / rate)
        // Without the budget, blocks at this worker's share follow on from the last one.
        let localStart = max(clock.now, block?.next ?? clock.now)
        if let budgetRetryAt, clock.now < budgetRetryAt {
            block = (localStart, interval * fleetSize, count)
            return
        }
        do {
            let reservation = try await budget.reserve(count: count, rate: rate)
            let now = clock.now
            block = (now.advanced(by: reservation.startsIn), interval, count)
            fleetSize = max(1, reservation.liveWorkers)
            observeFleet(events: reservation.pauseEvents)
            if reservation.pausedFor > .zero { extendPause(until: now.advanced(by: reservation.pausedFor)) }
            budgetRetryAt = nil
            if budgetFailing {
                budgetFailing = false
                logger.notice("the fleet's send budget answers again")
            }
        } catch {
            if !budgetFailing {
                budgetFailing = true
                logger.warning(
                    "the fleet's send budget cannot be reached; keeping to this worker's share of the rate",
                    metadata: ["error": "\(error)", "share": "1/\(fleetSize)"]
                )
            }
            budgetRetryAt = clock.now.advanced(by: .seconds(1))
            block = (localStart, interval * fleetSize, count)
        }
    }

    /// A worker of the fleet announced a pause (LISTEN/NOTIFY): hold every call until it ends, and slow down
    /// once if it is a new congestion event.
    public func fleetPaused(_ pause: SharedPause) {
        observeFleet(events: pause.events)
        guard pause.pausedFor > .zero else { return }
        let until = clock.now.advanced(by: pause.pausedFor)
        if pausedUntil.map({ until > $0 }) ?? true {
            pausedUntil = until
            block = nil  // slots reserved for the paused time are not used
        }
    }

    /// Slows down once for each congestion event of the fleet that this worker did not meet itself, so that
    /// the fleet as a whole slows down once per event, by the controller's factor.
    private func observeFleet(events: Int64) {
        defer { seenPauseEvents = max(seenPauseEvents ?? events, events) }
        guard let seen = seenPauseEvents, events > seen else { return }
        let now = clock.now
        if controller.recordThrottled(sentAt: now, now: now) {
            logger.notice(
                "another worker of the fleet met a 429: slowing down with it",
                metadata: ["rate": "\(controller.rate.map { "\(Int($0.rounded()))/s" } ?? "unlimited")"]
            )
        }
    }

    private func finishConsultingBudget() {
        consultingBudget = false
        let waiters = budgetWaiters
        budgetWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    private func extendPause(until: C.Instant) {
        if pausedUntil.map({ until > $0 }) ?? true { pausedUntil = until }
    }

    /// The call was accepted (anything but a 429).
    public func accepted() {
        controller.recordAccepted(now: clock.now)
        consecutivePauses = 0
    }

    /// The call sent at `sentAt` was answered 429.
    public func throttled(sentAt: C.Instant, retryAfter: Duration?) async {
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
        let extended = pausedUntil.map { until > $0 } ?? true
        extendPause(until: until)
        if let budget, extended {
            block = nil  // slots reserved for the paused time are not used
            // This worker's own cut stands for the event: note it as seen.
            if let events = try? await budget.pause(for: pause) {
                seenPauseEvents = max(seenPauseEvents ?? events, events)
            }
        }
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
