import Synchronization

/// Tasks waiting for a value, served first come first served. A waiting task that is cancelled leaves at
/// once with nil, so no continuation is left behind on any path.
final class Waiters<Value: Sendable>: Sendable {
    private struct State {
        var waiting: [(id: UInt64, continuation: CheckedContinuation<Value?, Never>)] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    var isEmpty: Bool { state.withLock { $0.waiting.isEmpty } }

    /// Waits until ``resumeFirst(with:)`` or ``resumeAll(with:)`` hands a value (or nil), or the task is
    /// cancelled (nil).
    func wait() async -> Value? {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
                let cancelled = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    state.waiting.append((id, continuation))
                    return false
                }
                if cancelled { continuation.resume(returning: nil) }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Value?, Never>? in
                guard let index = state.waiting.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiting.remove(at: index).continuation
            }
            continuation?.resume(returning: nil)
        }
    }

    /// Hands `value` to the longest-waiting task; false when none waits.
    func resumeFirst(with value: Value) -> Bool {
        let continuation = state.withLock { state in
            state.waiting.isEmpty ? nil : state.waiting.removeFirst().continuation
        }
        continuation?.resume(returning: value)
        return continuation != nil
    }

    /// Hands `value` to every waiting task.
    func resumeAll(with value: Value?) {
        let all = state.withLock { state in
            defer { state.waiting = [] }
            return state.waiting.map(\.continuation)
        }
        for continuation in all { continuation.resume(returning: value) }
    }
}
