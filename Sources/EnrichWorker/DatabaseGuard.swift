import EnrichQueue
import Logging
import Synchronization

/// Runs the worker's database statements within one outage budget: a statement that fails (or gets no
/// answer) is retried with a short backoff until the database has been failing for the outage limit, then
/// ``WorkerError`` (`databaseUnavailable`) is thrown naming the server and the cause in plain words.
///
/// Every statement is bounded by what is left of the budget (``Database/deadline``), so a statement waiting
/// for a connection that the pool cannot open gives up when the budget ends rather than after the pool's
/// own retries. One budget is shared by the claimer, the writer and the heartbeat: any successful
/// statement ends an outage for all. Only transient failures are retried (``DatabaseError/isTransient``);
/// a statement the server rejects for its content stops the run at once.
final class DatabaseGuard: Sendable {
    private struct State {
        var budget: OutageBudget<ContinuousClock.Instant>
        /// Whether this outage has been logged (once per outage, whichever task sees it first).
        var warned = false
        /// Once the run is stopping, no statement may outlast this.
        var hardDeadline: ContinuousClock.Instant?
        /// The budget was spent: from then on a statement gets one short try (the database may be back).
        var gaveUp = false
    }

    private let state: Mutex<State>
    private let database: Database
    private let logger: Logger
    /// The shortest time a statement is given, even when the budget is almost spent.
    private let minimumStatementTime: Duration = .seconds(1)

    init(limit: Duration, database: Database, logger: Logger) {
        self.state = Mutex(State(budget: OutageBudget(limit: limit)))
        self.database = database
        self.logger = logger
    }

    /// Whether statements are failing right now (an outage is under way).
    var isFailing: Bool { state.withLock { $0.budget.failingSince != nil } }

    /// From now on every statement ends by `deadline` (the run is stopping).
    func limit(to deadline: ContinuousClock.Instant) {
        state.withLock { $0.hardDeadline = $0.hardDeadline.map { min($0, deadline) } ?? deadline }
    }

    func run<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        var failures = 0
        while true {
            let started = ContinuousClock.now
            let (deadline, gaveUp) = state.withLock { state in
                let budget =
                    state.gaveUp
                    ? started + .milliseconds(500)
                    : state.budget.deadline(forStatementAt: started, minimum: minimumStatementTime)
                return (state.hardDeadline.map { min($0, budget) } ?? budget, state.gaveUp)
            }
            do {
                let value = try await Database.$deadline.withValue(deadline) { try await body() }
                state.withLock {
                    $0.budget.recordSuccess()
                    $0.warned = false
                    $0.gaveUp = false
                }
                return value
            } catch {
                if error is CancellationError || Task.isCancelled { throw CancellationError() }
                // A statement the server rejects for its content would fail forever: stop at once.
                if let error = error as? DatabaseError, !error.isTransient { throw error }
                let now = ContinuousClock.now
                // The run is stopping and its time is up, or the outage limit was reached: no more retries.
                if gaveUp {
                    // Another statement spent the budget: this one ends the run the same way, in the same words.
                    let outage = state.withLock { $0.budget.failingSince.map { $0.duration(to: now) } } ?? .zero
                    throw await unavailable(for: outage, error)
                }
                if let hard = state.withLock({ $0.hardDeadline }), now >= hard { throw error }
                let (outage, firstWarning, retryBy) = state.withLock { state in
                    let outage = state.budget.recordFailure(startedAt: started, now: now)
                    defer { state.warned = true }
                    return (outage, !state.warned, state.budget.deadline(forStatementAt: now, minimum: .zero))
                }
                if let outage {
                    state.withLock { $0.gaveUp = true }
                    throw await unavailable(for: outage, error)
                }
                failures += 1
                if firstWarning {
                    logger.warning(
                        "database statement failed; retrying until the outage limit",
                        metadata: ["operation": "\(operation)", "error": "\(error)"]
                    )
                } else {
                    logger.debug(
                        "database statement failed; retrying",
                        metadata: ["operation": "\(operation)", "error": "\(error)", "failures": "\(failures)"]
                    )
                }
                let backoff = min(.milliseconds(100) * (1 << min(failures, 6)), .seconds(5))
                try await Task.sleep(until: min(now + backoff, max(retryBy, now)), clock: .continuous)
            }
        }
    }

    /// The error that ends a run whose database stayed away past the outage limit, naming the server and
    /// the cause in plain words (from a fresh connection attempt when one can tell).
    private func unavailable(for outage: Duration, _ error: any Error) async -> WorkerError {
        let cause = await database.probe() ?? "\(error)"
        return WorkerError.databaseUnavailable(
            server: database.configuration.description,
            for: outage,
            limit: state.withLock { $0.budget.limit },
            cause: cause
        )
    }
}
