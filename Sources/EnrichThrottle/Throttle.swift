import EnrichCore
import Logging
import Synchronization

/// The one throttle a process shares across all its concurrent callers.
///
/// Every call first ``acquire()``s a send slot: slots are spaced at the controller's current rate (no
/// bursts beyond it), and while a pause is in force (after a 429) nobody gets one. A 429 pauses *all*
/// callers until its Retry-After (capped), or for a jittered backoff when the server gave none, and lowers
/// the rate through ``AdaptiveRateController``; accepted calls let it climb back.
///
/// In a fleet (a ``SharedSendBudget``), a known rate is the fleet's: send slots come from blocks reserved
/// for the whole fleet (a tenth of a second of the rate each, longer on a slow database), and a 429 pauses
/// the fleet. Without a known rate, one worker of the fleet leads (``leadFleet()``): its controller is fed
/// the calls the whole fleet reports accepted and its congestion events, and the rate it sets is the
/// fleet's, shared through the budget; until there is one the throttle sends unlimited and learns the
/// fleet's pauses every quarter second. When the budget cannot be reached, a worker keeps to its share of
/// the rate (the rate over the live workers last seen).
///
/// The hot path does not enter the actor: while calls may go out unlimited (no rate yet, no pause, no
/// look at the fleet due), the actor opens a gate (``Gate``) for up to 50 ms, and ``acquire()`` only reads
/// it under a lock; ``accepted()`` counts under the same lock, and the actor folds those counts into its
/// controller whenever it runs (at least every 50 ms while calls flow). Paced sends, pauses and the fleet's
/// budget still go through the actor.
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
    /// The time the last reserved block covers.
    private var blockSpan = Duration.zero
    /// The budget's last few round trips: a block covers at least two of the shortest (see ``blockTime``).
    private var reserveRoundTrips: [Duration] = []
    private var budgetWaiters: [CheckedContinuation<Void, Never>] = []
    /// Callers waiting for another caller's round trip to the budget (a reservation, or the first look at the
    /// fleet's pause): parked, for tests that drive a manual clock.
    var budgetWaiterCount: Int { budgetWaiters.count }
    /// Live workers when the budget last answered: the share to keep to without it.
    private var fleetSize = 1
    private var budgetFailing = false
    /// While the budget fails, when to try it again (until then, blocks at this worker's share).
    private var budgetRetryAt: C.Instant?
    private var lastPauseCheck: C.Instant?
    /// Whether the first look at the fleet's pause has been made (until then nobody sends).
    private var firstPauseLookDone = false
    /// The fleet's congestion events this worker has slowed down for (nil: none seen yet).
    private var seenPauseEvents: Int64?
    /// An adaptive fleet: the rate its leader set (nil: unlimited, or no leader).
    private var sharedRate: Double?
    /// When the budget last said another worker leads: this one tries for the lead only when no answer
    /// within a lease said so.
    private var otherLeadSeen: C.Instant?
    /// Calls accepted since this worker last reported them to the budget.
    private var unreported: Int64 = 0
    /// While this worker leads an adaptive fleet: the controller fed by the whole fleet, and the fleet's
    /// accepted calls and congestion events as it last read them.
    private var lead: FleetLead?
    private var leadTurnRunning = false
    private var leadTurnAgain = false
    /// When the last pause before the current one ended: what the server accepted since then is measured.
    private var lastPauseEnd: C.Instant?
    /// When the budget last answered again after an outage of a second or more (the database was away): the
    /// calls stalled with it, so what the server accepted before says nothing about its limit (a 429 just
    /// after an outage cut a fleet from 381/s to 39/s, measured over it). See ``measuredSince(_:now:)``.
    private var budgetBackAt: C.Instant?
    /// Since when the budget could not be reached (by a reservation or the leader's turn); nil while it answers.
    private var budgetDownSince: C.Instant?
    /// The run is stopping: no caller waits for a send slot any more (``stopWaiting()``).
    private var stopping = false
    /// Calls this worker reported accepted to the budget, in total (a leader tells them from the others').
    private var reportedByMe: Int64 = 0

    /// What callers read and count without entering the actor.
    private struct Gate: Sendable {
        /// Until when a caller may send at once without asking the actor (nil: ask it).
        var openUntil: C.Instant?
        /// Calls accepted since the actor last folded them, and when the first and the last were.
        var accepted = 0
        var firstAccepted: C.Instant?
        var lastAccepted: C.Instant?
    }

    /// How long an open gate holds without the actor: short enough that the controller's one-second
    /// measurement (ten slots of 0.1 s) sees accepted calls in the right slot.
    private static var gateSpan: Duration { .milliseconds(50) }
    /// How often a worker of a fleet looks at the fleet's pause (the fallback for a lost NOTIFY).
    private static var pauseLookInterval: Duration { .milliseconds(250) }
    private let gate = Mutex(Gate())

    /// - Parameter budget: the fleet's shared budget; nil for a process on its own.
    public init(configuration: Configuration = .init(), clock: C, logger: Logger, budget: (any SharedSendBudget)? = nil)
    {
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.controller = AdaptiveRateController(configuration: configuration.controller)
        self.budget = budget
    }

    /// What a leader of an adaptive fleet keeps between its turns.
    private struct FleetLead {
        /// Fed with this worker's accepted calls as they happen and the others' as the budget row reports them.
        var controller: AdaptiveRateController<C.Instant>
        /// The fleet's accepted total, this worker's reported total and the congestion events at the last turn.
        var accepted: Int64
        var mine: Int64
        /// Others' calls counted ahead of the row (a negative difference), taken off the next turn's.
        var owed: Int64 = 0
        var events: Int64
        var at: C.Instant
    }

    /// Whether the rate is the fleet's adaptive one, set by its leader.
    private var isFleetAdaptive: Bool { budget != nil && configuration.controller.maximumRate == nil }

    /// The run is stopping: every caller waiting for a send slot (or for a pause to end) gives up within a
    /// tenth of a second with `CancellationError`, and later callers at once: a call not sent yet is not
    /// worth the shutdown grace (its row goes back unstarted).
    public func stopWaiting() {
        stopping = true
        closeGate()
        finishConsultingBudget()
    }

    /// Sleeps until `deadline`, in steps of at most a tenth of a second so that ``stopWaiting()`` is heard.
    private func wait(until deadline: C.Instant) async throws {
        while clock.now < deadline {
            if stopping { throw CancellationError() }
            try await clock.sleep(until: min(deadline, clock.now.advanced(by: .milliseconds(100))), tolerance: nil)
        }
    }

    /// Waits for a send slot and returns the instant the call is sent (pass it back to ``throttled(sentAt:retryAfter:)``).
    /// Without entering the actor while its gate is open.
    public nonisolated func acquire() async throws -> C.Instant {
        let now = clock.now
        if gate.withLock({ gate in gate.openUntil.map { now < $0 } ?? false }) { return now }
        return try await acquireThroughActor()
    }

    private func acquireThroughActor() async throws -> C.Instant {
        foldAccepted()
        defer { publishGate() }
        if stopping { throw CancellationError() }
        while true {
            if let budget, configuration.controller.maximumRate != nil || sharedRate != nil {
                if let sent = try await acquireShared(budget) { return sent }
            } else if let sent = try await acquireLocal() {
                return sent
            }
        }
    }

    /// A send slot paced by this process's controller (unlimited before a 429); nil when the fleet's
    /// leader has set a shared rate meanwhile.
    private func acquireLocal() async throws -> C.Instant? {
        while true {
            if stopping { throw CancellationError() }
            let now = clock.now
            if let pausedUntil, now < pausedUntil {
                try await wait(until: pausedUntil)
                continue
            }
            if budget != nil && consultingBudget && !firstPauseLookDone {
                await withCheckedContinuation { budgetWaiters.append($0) }
                continue
            }
            if let budget, !consultingBudget,
                lastPauseCheck.map({ $0.duration(to: now) >= Self.pauseLookInterval }) ?? true,
                budgetRetryAt.map({ now >= $0 }) ?? true
            {
                // One look at the fleet's pause at a time. Nobody sends before the first (a worker may start
                // during a fleet pause); the later ones, every quarter second, are the fallback for a lost
                // NOTIFY and hold only the caller that makes them: holding every caller for each round trip
                // cut a run of 512 tasks to 2,000 calls/s whenever the database was slow to answer.
                lastPauseCheck = now
                consultingBudget = true
                let accepted = takeUnreported()
                do {
                    let pause = try await budget.pause(accepted: accepted)
                    budgetRetryAt = nil
                    observeFleet(events: pause.events)
                    if pause.pausedFor > .zero { extendPause(until: clock.now.advanced(by: pause.pausedFor)) }
                    if lead == nil { followLead(rate: pause.rate, hasLeader: pause.hasLeader) }
                } catch {
                    returnUnreported(accepted)
                    budgetRetryAt = clock.now.advanced(by: .seconds(1))
                }
                firstPauseLookDone = true
                finishConsultingBudget()
                if sharedRate != nil { return nil }
                continue
            }
            guard let rate = controller.currentRate(now: now) else { return now }
            let interval = Duration.seconds(1 / rate)
            // Allow a slot to lag at most one interval behind, so an idle period does not bank a burst.
            let slot = max(nextSlot ?? now, now.advanced(by: .zero - interval))
            nextSlot = slot.advanced(by: interval)
            if slot <= now { return now }
            try await wait(until: slot)
            if let pausedUntil, clock.now < pausedUntil { continue }
            return clock.now
        }
    }

    /// A send slot from the fleet's reserved blocks (a known or shared rate in a fleet); nil when an
    /// adaptive fleet's rate became unlimited.
    private func acquireShared(_ budget: any SharedSendBudget) async throws -> C.Instant? {
        while true {
            try Task.checkCancellation()
            if stopping { throw CancellationError() }
            if isFleetAdaptive && sharedRate == nil {
                block = nil
                return nil
            }
            let now = clock.now
            if let pausedUntil, now < pausedUntil {
                try await wait(until: pausedUntil)
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
                if slot > now { try await wait(until: slot) }
                if let pausedUntil, clock.now < pausedUntil { continue }
                return clock.now
            }
            if consultingBudget {
                await withCheckedContinuation { budgetWaiters.append($0) }
                continue
            }
            // The block is used up, but its slots may still lie ahead: the next block is reserved only once
            // the last of them is less than a block away, so a worker holds at most two blocks of the
            // fleet's future (at a low rate a slot is a second or more: 32 callers each reserving their own
            // would book half a minute ahead, and hold the fleet back there after the rate rose), while the
            // reservation's round trip still overlaps the current block.
            if let current = block {
                let last = current.next.advanced(by: .zero - current.interval)
                let reserveFrom = last.advanced(by: .zero - blockSpan)
                if reserveFrom > now {
                    try await wait(until: reserveFrom)
                    continue
                }
            }
            await reserve(from: budget)
        }
    }

    /// The time a reserved block covers: a tenth of a second, or two of the budget's round trips when the
    /// database is slower than that (at most a second). A worker sends at most one block per round trip, so
    /// with tenth-of-a-second blocks a database answering in a second held each worker to a tenth of the rate
    /// (a loaded test suite: 18 sends in 5 s where 300 were allowed); the rate itself is the budget's to keep.
    /// The shortest of the last four round trips: one slow answer does not make the blocks long.
    private var blockTime: Duration {
        min(max(.milliseconds(100), (reserveRoundTrips.min() ?? .zero) * 2), .seconds(1))
    }

    /// Reserves the next block of slots; without the budget, takes a block at this worker's share of the rate.
    private func reserve(from budget: any SharedSendBudget) async {
        consultingBudget = true
        defer { finishConsultingBudget() }
        let rate =
            (isFleetAdaptive ? sharedRate : controller.currentRate(now: clock.now))
            ?? configuration.controller.maximumRate ?? 1
        let count = max(1, min(Int((rate * blockTime.inSeconds).rounded(.up)), 256))
        let interval = Duration.seconds(1 / rate)
        // Without the budget, blocks at this worker's share follow on from the last one.
        let localStart = max(clock.now, block?.next ?? clock.now)
        if let budgetRetryAt, clock.now < budgetRetryAt {
            block = (localStart, interval * fleetSize, count)
            return
        }
        let accepted = takeUnreported()
        do {
            let asked = clock.now
            let reservation = try await budget.reserve(count: count, rate: rate, accepted: accepted)
            let now = clock.now
            reserveRoundTrips.append(asked.duration(to: now))
            if reserveRoundTrips.count > 4 { reserveRoundTrips.removeFirst() }
            block = (now.advanced(by: reservation.startsIn), interval, count)
            blockSpan = interval * count
            fleetSize = max(1, reservation.liveWorkers)
            if isFleetAdaptive && lead == nil { followLead(rate: reservation.rate, hasLeader: reservation.hasLeader) }
            observeFleet(events: reservation.pauseEvents)
            if reservation.pausedFor > .zero { extendPause(until: now.advanced(by: reservation.pausedFor)) }
            budgetRetryAt = nil
            budgetAnswered(at: now)
            if budgetFailing {
                budgetFailing = false
                logger.notice("the fleet's send budget answers again")
            }
        } catch {
            returnUnreported(accepted)
            budgetMissed()
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
    /// once if it is a new congestion event (in an adaptive fleet, its leader cuts the fleet's rate at once).
    public func fleetPaused(_ pause: SharedPause) async {
        foldAccepted()
        defer { publishGate() }
        observeFleet(events: pause.events)
        if pause.pausedFor > .zero {
            let until = clock.now.advanced(by: pause.pausedFor)
            if pausedUntil.map({ until > $0 }) ?? true {
                extendPause(until: until)
                block = nil  // slots reserved for the paused time are not used
            }
        }
        if let lead, pause.events > lead.events { await leadTurn() }
    }

    /// With a known rate, slows down once for each congestion event of the fleet that this worker did not
    /// meet itself, so that the fleet as a whole slows down once per event, by the controller's factor. (An
    /// adaptive fleet's leader does that for everyone.)
    private func observeFleet(events: Int64) {
        defer { seenPauseEvents = max(seenPauseEvents ?? events, events) }
        guard !isFleetAdaptive, let seen = seenPauseEvents, events > seen else { return }
        let now = clock.now
        if controller.recordThrottled(sentAt: now, now: now) {
            logger.notice(
                "another worker of the fleet met a 429: slowing down with it",
                metadata: ["rate": "\(Self.describe(controller.rate))"]
            )
        }
    }

    private func finishConsultingBudget() {
        consultingBudget = false
        let waiters = budgetWaiters
        budgetWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    /// The budget could not be reached: it is down from now, unless it already was.
    private func budgetMissed() {
        budgetDownSince = budgetDownSince ?? clock.now
    }

    /// The budget answered: if it had been away for a second or more, measurements start again now (a
    /// shorter miss, a slow statement, stalls no calls).
    private func budgetAnswered(at now: C.Instant) {
        if let down = budgetDownSince, down.duration(to: now) >= .seconds(1) { budgetBackAt = now }
        budgetDownSince = nil
    }

    /// Where a cut starts measuring what the server accepted (nil: it does not measure, it cuts from the
    /// rate): `since`, but never before the budget came back. For a second plus a measurement window after it
    /// came back it does not measure at all: calls are still picking up, and other workers' counts reach the
    /// budget only as their own retries get through.
    private func measuredSince(_ since: C.Instant?, now: C.Instant) -> C.Instant? {
        guard let budgetBackAt else { return since }
        if budgetBackAt.duration(to: now) < configuration.controller.measurementWindow + .seconds(1) { return nil }
        return since.map { max($0, budgetBackAt) }
    }

    private func extendPause(until: C.Instant) {
        guard pausedUntil.map({ until > $0 }) ?? true else { return }
        closeGate()
        if let ended = pausedUntil, ended <= clock.now { lastPauseEnd = ended }
        pausedUntil = until
    }

    /// The call was accepted (anything but a 429). Counted under the gate's lock; the actor folds the
    /// counts into its controller the next time it runs.
    public nonisolated func accepted() {
        let now = clock.now
        gate.withLock { gate in
            gate.accepted += 1
            if gate.firstAccepted == nil { gate.firstAccepted = now }
            gate.lastAccepted = now
        }
    }

    /// Moves the calls counted by ``accepted()`` into the controller (spread over the time they were
    /// accepted in), the count to report to the fleet, and a leader's controller.
    private func foldAccepted() {
        let (count, first, last) = gate.withLock { gate in
            defer {
                gate.accepted = 0
                gate.firstAccepted = nil
                gate.lastAccepted = nil
            }
            return (gate.accepted, gate.firstAccepted, gate.lastAccepted)
        }
        guard count > 0, let first, let last else { return }
        controller.recordAccepted(count: count, from: first, to: last)
        consecutivePauses = 0
        guard budget != nil else { return }
        unreported += Int64(count)
        // A leader counts its own calls at once; the others' arrive through the budget row.
        lead?.controller.recordAccepted(count: count, from: first, to: last)
    }

    /// Opens the gate while a caller may send at once: no stop, no pause, no rate (this process's or the
    /// fleet's) and, in a fleet, no look at its pause due; for ``gateSpan`` at most. Closes it otherwise.
    private func publishGate() {
        let now = clock.now
        var openUntil: C.Instant?
        let paused = pausedUntil.map { now < $0 } ?? false
        if !stopping && !paused && controller.currentRate(now: now) == nil {
            let span = now.advanced(by: Self.gateSpan)
            if budget == nil {
                openUntil = span
            } else if configuration.controller.maximumRate == nil && sharedRate == nil, firstPauseLookDone,
                let lastPauseCheck, budgetRetryAt == nil
            {
                let due = lastPauseCheck.advanced(by: Self.pauseLookInterval)
                if due > now { openUntil = min(span, due) }
            }
        }
        gate.withLock { $0.openUntil = openUntil }
    }

    private func closeGate() { gate.withLock { $0.openUntil = nil } }

    /// In an adaptive fleet, until cancelled: takes the lead of the fleet's rate when no live worker holds
    /// it and, while leading, sets the rate every quarter second from the calls the whole fleet accepted and
    /// its congestion events (one cut per event, one decision to raise for all). Returns at once otherwise.
    public func leadFleet() async {
        guard isFleetAdaptive else { return }
        while !Task.isCancelled {
            // A follower tries for the lead only when no answer from the budget within a lease said another
            // worker holds it.
            let leaderSeen = otherLeadSeen.map { $0.duration(to: clock.now) < .seconds(2) } ?? false
            if lead != nil || !leaderSeen { await leadTurn() }
            try? await clock.sleep(for: lead == nil ? .seconds(1) : .milliseconds(250), tolerance: nil)
        }
    }

    /// One turn of the lead: renews it (or takes it), writes the rate decided at the previous turn, and
    /// feeds what the fleet did since into the controller. A turn asked for while one runs follows it.
    private func leadTurn() async {
        guard let budget else { return }
        foldAccepted()
        defer { publishGate() }
        if leadTurnRunning {
            leadTurnAgain = true
            return
        }
        leadTurnRunning = true
        defer { leadTurnRunning = false }
        repeat {
            leadTurnAgain = false
            var proposal: (rate: Double?, ceiling: Double?) = (nil, nil)
            if var current = lead {
                proposal = (current.controller.currentRate(now: clock.now), current.controller.ceiling)
                lead = current
            }
            let answer: SharedLead?
            do {
                answer = try await budget.lead(rate: proposal.rate, ceiling: proposal.ceiling)
            } catch {
                budgetMissed()
                return  // the lease decides who leads; this worker keeps its view until the budget answers
            }
            let now = clock.now
            budgetAnswered(at: now)
            guard let answer else {
                if lead != nil {
                    lead = nil
                    logger.notice("another worker of the fleet leads its rate now")
                }
                return
            }
            if answer.pausedFor > .zero { extendPause(until: now.advanced(by: answer.pausedFor)) }
            guard var current = lead, answer.continued else {
                var controller = AdaptiveRateController<C.Instant>(configuration: configuration.controller)
                if !answer.stale { controller.adopt(rate: answer.rate, ceiling: answer.ceiling, now: now) }
                lead = FleetLead(
                    controller: controller,
                    accepted: answer.accepted,
                    mine: reportedByMe,
                    events: answer.events,
                    at: now
                )
                sharedRate = controller.rate
                logger.info(
                    "this worker leads the fleet's rate",
                    metadata: ["rate": "\(Self.describe(controller.rate))", "adopted": "\(!answer.stale)"]
                )
                continue
            }
            // This worker's own calls were counted as they happened: only the others' come from the row.
            // A report of this worker's counts as reported once sent (``takeUnreported()``) but reaches the
            // row a round trip later: a turn between the two sees fewer than this worker reported, and the
            // difference is carried to the next turn rather than dropped.
            let others = (answer.accepted - current.accepted) - (reportedByMe - current.mine) + current.owed
            current.owed = min(0, others)
            current.controller.recordAccepted(count: Int(max(0, others)), from: current.at, to: now)
            current.accepted = answer.accepted
            current.mine = reportedByMe
            current.at = now
            var cut = false
            if answer.events > current.events {
                current.events = answer.events
                cut = current.controller.recordThrottled(
                    sentAt: now,
                    now: now,
                    activeSince: measuredSince(lastPauseEnd, now: now)
                )
            }
            sharedRate = current.controller.currentRate(now: now)
            lead = current
            if cut {
                logger.notice(
                    "the fleet met a 429: its rate is cut once, for every worker",
                    metadata: ["rate": "\(Self.describe(sharedRate))"]
                )
                leadTurnAgain = true  // store the cut at once
            }
        } while leadTurnAgain
    }

    /// The accepted calls to report with the next statement, counted as reported before it is sent: a
    /// leader's turn that reads the row first then counts them as not yet arrived (carried to the next turn)
    /// rather than as another worker's.
    private func takeUnreported() -> Int64 {
        foldAccepted()
        let accepted = unreported
        unreported = 0
        reportedByMe += accepted
        return accepted
    }

    /// The statement carrying `accepted` failed: they are reported with the next one.
    private func returnUnreported(_ accepted: Int64) {
        unreported += accepted
        reportedByMe -= accepted
    }

    /// A follower's view of the fleet's rate and its leader, from the budget's answer.
    private func followLead(rate: Double?, hasLeader: Bool) {
        sharedRate = rate
        otherLeadSeen = hasLeader ? clock.now : nil
    }

    private static func describe(_ rate: Double?) -> String { rate.map { "\(Int($0.rounded()))/s" } ?? "unlimited" }

    /// The call sent at `sentAt` was answered 429.
    public func throttled(sentAt: C.Instant, retryAfter: Duration?) async {
        foldAccepted()
        defer { publishGate() }
        throttledCount += 1
        let now = clock.now
        // Sending resumed when the previous pause ended: measure what the server accepted since then.
        let activeSince = pausedUntil.flatMap { $0 < now ? $0 : nil }
        let newEvent = controller.recordThrottled(
            sentAt: sentAt,
            now: now,
            activeSince: measuredSince(activeSince, now: now)
        )
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
                if let lead, events > lead.events { await leadTurn() }
            }
        }
        if newEvent {
            logger.notice(
                "429 from the API: pausing all calls and slowing down",
                metadata: [
                    "pause": "\(pause)", "rate": "\(Self.describe(controller.rate))",
                    "retry_after": "\(retryAfter.map { "\($0)" } ?? "absent")",
                ]
            )
        }
    }

    /// Whether a Retry-After (or backoff) pause holds every call right now.
    public func isPaused() -> Bool { pausedUntil.map { clock.now < $0 } ?? false }

    /// The current send rate (requests per second), nil when unlimited.
    public func currentRate() -> Double? {
        foldAccepted()
        let local = controller.currentRate(now: clock.now)
        return isFleetAdaptive ? sharedRate ?? local : local
    }

    /// Whether this worker leads its adaptive fleet's rate now.
    public func isLeadingFleet() -> Bool { lead != nil }
}
