import Synchronization

/// A clock that only moves when the test says so (after hummingbird's and postgres-nio's test clocks).
/// Sleepers are resumed by ``advance(by:)`` once their deadline is reached.
final class ManualClock: Clock, Sendable {
    struct Instant: InstantProtocol, CustomStringConvertible {
        var offset: Duration
        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
        var description: String { "t+\(offset)" }
    }

    private struct Sleeper {
        let id: Int
        let deadline: Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var sleepers: [Sleeper] = []
        var nextID = 0
    }

    private let state = Mutex(State())

    var now: Instant { state.withLock { $0.now } }
    var minimumResolution: Duration { .zero }

    /// Tasks currently sleeping on this clock.
    var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                // A task cancelled before its sleeper is stored must not sleep: the cancellation handler has
                // already run and found nothing to resume.
                enum Outcome { case due, cancelled, sleeping }
                let outcome = state.withLock { state -> Outcome in
                    if Task.isCancelled { return .cancelled }
                    if deadline <= state.now { return .due }
                    state.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: continuation))
                    return .sleeping
                }
                switch outcome {
                case .due: continuation.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .sleeping: break
                }
            }
        } onCancel: {
            let sleeper = state.withLock { state -> Sleeper? in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.sleepers.remove(at: index)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward and wakes every sleeper whose deadline has come.
    func advance(by duration: Duration) {
        let due = state.withLock { state -> [Sleeper] in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Moves time to the earliest sleeper's deadline (if any) and wakes it.
    func advanceToNextDeadline() {
        let next = state.withLock { state in state.sleepers.map(\.deadline).min().map { state.now.duration(to: $0) } }
        if let next { advance(by: max(next, .zero)) }
    }

    /// Runs time forward, one sleeper's deadline at a time, until `done()` holds (yielding, never sleeping).
    /// Time moves only once the tasks under test have settled (the number of sleepers stayed the same over
    /// several yields), so that work which takes no time in the test does not see time pass.
    ///
    /// That settling is a guess: on a loaded machine a woken task may not run for longer than it waits. A test
    /// that can tell when every task under test is parked (done, asleep on this clock, or waiting for another
    /// task under test, which `parked` must count too) passes `parked`, and time then moves only while that holds
    /// at every settling yield.
    func drive(until done: () -> Bool, parked: (() async -> Bool)? = nil) async {
        // Cancellation (e.g. by a test's time limit) ends the loop instead of spinning forever.
        while !done() && !Task.isCancelled {
            var settled = 0
            var last = -1
            var changed = ContinuousClock.now
            // Quiet for 100 yields and 5 ms of real time: on a loaded machine (the whole suite in parallel)
            // a task between two of its hops may not run during 100 yields, and time moved then would find
            // it late (a send measured a block early).
            while (settled < 100 || changed.duration(to: .now) < .milliseconds(5)) && !done() && !Task.isCancelled {
                await Task.yield()
                let count = sleeperCount
                if count == last, await parked?() ?? true {
                    settled += 1
                } else {
                    (settled, last, changed) = (0, count, ContinuousClock.now)
                }
            }
            if sleeperCount > 0 && !done() && !Task.isCancelled { advanceToNextDeadline() }
        }
    }

    /// Waits (by yielding, not sleeping) until `count` tasks sleep on this clock.
    func waitForSleepers(_ count: Int = 1) async {
        while sleeperCount < count && !Task.isCancelled { await Task.yield() }
    }
}
