import Synchronization

/// How a run is ending, shared by its tasks: the first fatal error, whether a stop was requested, and the
/// absolute deadline by which the stopping run must be gone.
final class RunControl<C: Clock>: Sendable where C.Duration == Duration {
    private struct State {
        var fatal: (any Error)?
        var interrupted = false
        var stopDeadline: C.Instant?
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())
    private let clock: C
    /// In-flight calls may finish within this after a stop begins.
    let grace: Duration
    /// What the end of a stop may take beyond the grace: the last writes and the run's record.
    static var stopMargin: Duration { .seconds(5) }

    init(grace: Duration, clock: C) {
        self.grace = grace
        self.clock = clock
    }

    /// Records the first fatal error and begins the stop; returns whether `error` is why the run stops. A
    /// later error is a consequence of the first, and one after a requested stop (SIGTERM) a consequence of
    /// stopping (statements are then bounded by the stop deadline): the run stays interrupted.
    @discardableResult
    func fail(_ error: any Error) -> Bool {
        let (recorded, waiters) = state.withLock { state in
            let recorded = state.fatal == nil && !state.interrupted
            if recorded { state.fatal = error }
            return (recorded, beginStop(&state))
        }
        for waiter in waiters { waiter.resume() }
        return recorded
    }

    /// A stop was requested (SIGINT/SIGTERM; the run's own end of work is not one).
    func interrupt() {
        let waiters = state.withLock {
            $0.interrupted = true
            return beginStop(&$0)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Sets the stop deadline (the first stop's) and hands back the waiters to resume.
    private func beginStop(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        if state.stopDeadline == nil { state.stopDeadline = clock.now.advanced(by: grace + Self.stopMargin) }
        defer { state.waiters = [:] }
        return Array(state.waiters.values)
    }

    var fatalError: (any Error)? { state.withLock { $0.fatal } }
    var isInterrupted: Bool { state.withLock { $0.interrupted } }
    /// Set once the run is stopping: by then it must have ended, whatever is stuck.
    var stopDeadline: C.Instant? { state.withLock { $0.stopDeadline } }

    /// Returns once the run began stopping (``interrupt()`` or ``fail(_:)``); throws `CancellationError`
    /// if cancelled first.
    func waitForStop() async throws {
        let id = state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.stopDeadline != nil || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
        try Task.checkCancellation()
    }
}
