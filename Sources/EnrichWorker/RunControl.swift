import Synchronization

/// How a run is ending, shared by its tasks: the first fatal error, and whether a shutdown was requested.
final class RunControl: Sendable {
    private struct State {
        var fatal: (any Error)?
        var interrupted = false
    }

    private let state = Mutex(State())
    private let interruption = WakeSignal()

    /// Records the first fatal error (later ones are consequences of it).
    func fail(_ error: any Error) {
        state.withLock { if $0.fatal == nil { $0.fatal = error } }
    }

    func interrupt() {
        state.withLock { $0.interrupted = true }
        interruption.fire()
    }

    var fatalError: (any Error)? { state.withLock { $0.fatal } }
    var isInterrupted: Bool { state.withLock { $0.interrupted } }

    /// Returns once ``interrupt()`` was called; throws `CancellationError` if cancelled first.
    func waitForInterrupt() async throws {
        while !isInterrupted {
            try Task.checkCancellation()
            await interruption.wait(timeout: .seconds(3600))
        }
    }
}
