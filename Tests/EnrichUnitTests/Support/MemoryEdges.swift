import EnrichCore
import EnrichQueue
import NymbleAPI
import Synchronization

@testable import EnrichWorker

/// An in-memory ``RunStore``: the queue's rows and this run's record, with the same fencing as PostgreSQL
/// (a write counts only for rows still held by this run under the same claim). Hooks let a test make a
/// write fail or hang, or take a row over behind the run's back.
final class MemoryRunStore: RunStore {
    struct Row: Sendable {
        var pair: Pair
        var state: ItemState = .pending
        var attempts: Int32 = 0
        var claims: Int32 = 0
        var heldByUs = false
        var context: CommerceContext?
        var lastError: String?
    }

    private struct State {
        var rows: [Row]
        var writes = 0
        var mostHeld = 0
        var heartbeats: [HeartbeatRecord] = []
        var ends: [RunEnd] = []
    }

    private let state: Mutex<State>
    /// Runs before every write, with its number (1, 2, ...): throw to fail it, await to delay or hang it.
    let beforeWrite: @Sendable (Int) async throws -> Void

    init(pairs: [Pair], beforeWrite: @escaping @Sendable (Int) async throws -> Void = { _ in }) {
        state = Mutex(State(rows: pairs.map { Row(pair: $0) }))
        self.beforeWrite = beforeWrite
    }

    var rows: [Row] { state.withLock { $0.rows } }
    /// The most rows this run held (running) at once, as of each claim.
    var mostHeld: Int { state.withLock { $0.mostHeld } }
    var ends: [RunEnd] { state.withLock { $0.ends } }
    var heartbeats: [HeartbeatRecord] { state.withLock { $0.heartbeats } }

    /// What another run wrote for a row it took over.
    static let otherRunContext = CommerceContext(customerNumber: "OTHER", priceTier: nil, currencyCode: nil)

    /// Another run takes the row of `pair` over (its lease expired) and finishes it: this run's result for
    /// it is stale.
    func takeOver(_ pair: Pair) {
        state.withLock { state in
            guard let index = state.rows.firstIndex(where: { $0.pair == pair }) else { return }
            state.rows[index].heldByUs = false
            state.rows[index].claims += 1
            state.rows[index].state = .done
            state.rows[index].attempts += 1
            state.rows[index].context = Self.otherRunContext
        }
    }

    func claim(limit: Int) async throws -> Claimed {
        state.withLock { state in
            var items: [LeasedItem] = []
            for index in state.rows.indices where items.count < limit && state.rows[index].state == .pending {
                state.rows[index].state = .running
                state.rows[index].claims += 1
                state.rows[index].heldByUs = true
                let row = state.rows[index]
                items.append(
                    LeasedItem(
                        id: Int64(index),
                        pair: row.pair,
                        attempt: row.attempts + 1,
                        claim: row.claims,
                        maxAttempts: 3
                    )
                )
            }
            state.mostHeld = max(state.mostHeld, state.rows.count { $0.state == .running && $0.heldByUs })
            return Claimed(items: items, failed: 0)
        }
    }

    func write(_ batch: WriteBackBatch) async throws -> WriteBackOutcome {
        let number = state.withLock { state in
            state.writes += 1
            return state.writes
        }
        try await beforeWrite(number)
        return state.withLock { state in
            var outcome = WriteBackOutcome()
            func held(_ item: LeasedItem) -> Bool {
                let row = state.rows[Int(item.id)]
                guard row.heldByUs, row.state == .running, row.claims == item.claim else {
                    outcome.staleIDs.append(item.id)
                    return false
                }
                return true
            }
            for completion in batch.completions where held(completion.item) {
                let index = Int(completion.item.id)
                state.rows[index].state = .done
                state.rows[index].attempts += 1
                state.rows[index].context = completion.context
                state.rows[index].heldByUs = false
                outcome.done += 1
            }
            for failure in batch.failures where held(failure.item) {
                let index = Int(failure.item.id)
                state.rows[index].attempts += 1
                let forGood = failure.retryAfter == nil || state.rows[index].attempts >= failure.item.maxAttempts
                state.rows[index].state = forGood ? .failed : .pending
                state.rows[index].lastError = failure.reason
                state.rows[index].heldByUs = false
                if forGood { outcome.failedForGood += 1 } else { outcome.retried += 1 }
            }
            for release in batch.releases where held(release.item) {
                let index = Int(release.item.id)
                state.rows[index].state = .pending
                state.rows[index].heldByUs = false
                outcome.released += 1
            }
            return outcome
        }
    }

    func nextWork() async throws -> Queue.NextWork? {
        state.withLock { state in
            let running = state.rows.contains(where: { $0.state == .running })
            if state.rows.contains(where: { $0.state == .pending }) { return .init(delay: .zero, running: running) }
            return running ? .init(delay: .seconds(1), running: true) : nil
        }
    }

    func takeOverDeadRuns() async throws -> JobRuns.Abandoned { JobRuns.Abandoned() }
    func extendLeases() async throws {}
    func compactCounts() async throws {}
    func renewLiveness() async throws -> Bool { false }

    func counts() async throws -> QueueCounts {
        state.withLock { state in
            var counts = QueueCounts()
            for row in state.rows { counts[row.state] += 1 }
            return counts
        }
    }

    func recordHeartbeat(_ heartbeat: HeartbeatRecord) async throws -> Bool {
        state.withLock { $0.heartbeats.append(heartbeat) }
        return true
    }

    func recordEnd(_ end: RunEnd, within time: Duration) async throws {
        state.withLock { $0.ends.append(end) }
    }

    func listenForNewWork(_ wake: @escaping @Sendable () -> Void) async throws {
        try await Task.sleep(for: .seconds(3600))
    }

    func fleetStatus() async -> FleetStatus? { nil }

    var isFailing: Bool { false }
    func limitStatements(to time: Duration) {}
}

/// An ``EnrichmentAPI`` whose answers a test scripts: by default the simulator's context after `latency`
/// on the test's clock; `answer` may return an error or wait.
final class ScriptedAPI: EnrichmentAPI {
    typealias Answer = @Sendable (Pair, Int) async throws(NymbleAPIError) -> CommerceContext

    private let calls = Mutex<[Pair]>([])
    private let answer: Answer

    init(answer: @escaping Answer) { self.answer = answer }

    /// Every pair called, in order (retries included).
    var called: [Pair] { calls.withLock { $0 } }

    func enrich(_ pair: Pair, token: AccessToken) async throws(NymbleAPIError) -> CommerceContext {
        let number = calls.withLock { calls in
            calls.append(pair)
            return calls.count
        }
        return try await answer(pair, number)
    }

    /// The context the scripted API answers for a pair by default.
    static func context(_ pair: Pair) -> CommerceContext {
        CommerceContext(customerNumber: "CN-\(pair.userId)", priceTier: nil, currencyCode: "EUR")
    }
}

/// A value shared between a test and the tasks it starts.
final class Locked<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { value.withLock { body(&$0) } }
}
