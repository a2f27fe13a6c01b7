import EnrichQueue
import Logging
import Synchronization

/// Runs the worker's database statements, retrying failures with a short backoff until they have gone on
/// longer than the outage limit, then throwing ``WorkerError`` (`databaseUnavailable`). One budget is shared
/// by the claimer, the writer and the heartbeat, so any successful statement ends an outage for all. Only
/// transient failures are retried (``DatabaseError/isTransient``); any other is thrown at once, so a
/// statement that can never succeed stops the run instead of being retried while heartbeats succeed.
final class DatabaseGuard: Sendable {
    private let budget: Mutex<OutageBudget<ContinuousClock.Instant>>
    private let logger: Logger

    init(limit: Duration, logger: Logger) {
        self.budget = Mutex(OutageBudget(limit: limit))
        self.logger = logger
    }

    func run<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        var failures = 0
        while true {
            do {
                let value = try await body()
                budget.withLock { $0.recordSuccess() }
                return value
            } catch {
                if error is CancellationError || Task.isCancelled { throw CancellationError() }
                // A statement the server rejects for its content would fail forever: stop at once.
                if let error = error as? DatabaseError, !error.isTransient { throw error }
                let now = ContinuousClock.now
                if let outage = budget.withLock({ $0.recordFailure(now: now) }) {
                    throw WorkerError.databaseUnavailable(for: outage, lastError: error)
                }
                failures += 1
                logger.warning(
                    "database statement failed; retrying",
                    metadata: ["operation": "\(operation)", "error": "\(error)", "failures": "\(failures)"]
                )
                try await Task.sleep(for: min(.milliseconds(100) * (1 << min(failures, 6)), .seconds(5)))
            }
        }
    }
}
