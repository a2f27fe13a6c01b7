import Synchronization

/// A level-triggered wake-up for one waiter at a time: ``fire()`` wakes the current waiter, or the next one
/// if nobody is waiting. Fired from synchronous code (a LISTEN callback, another task) without awaiting.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<Void, Never>)?
        var cancelledID: UInt64?
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    func fire() {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter.continuation
            }
            state.pending = true
            return nil
        }
        continuation?.resume()
    }

    /// Returns when fired (or already fired since the last wait), after `timeout` on `clock`, or on
    /// cancellation.
    func wait<C: Clock>(timeout: Duration, clock: C) async where C.Duration == Duration {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitForFire() }
            group.addTask { try? await clock.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForFire() async {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.pending || state.cancelledID == id {
                        state.pending = false
                        return true
                    }
                    precondition(state.waiter == nil, "WakeSignal supports one waiter at a time")
                    state.waiter = (id, continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if let waiter = state.waiter, waiter.id == id {
                    state.waiter = nil
                    return waiter.continuation
                }
                // Cancelled before the continuation was stored: make the store resume at once.
                state.cancelledID = id
                return nil
            }
            continuation?.resume()
        }
    }
}
