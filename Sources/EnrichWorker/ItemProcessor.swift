import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import NymbleAPI

/// Calls `POST /api/auth/access` for one row and decides what becomes of it.
///
/// - 200: the context is written back (nulls stay nulls).
/// - 429: the shared throttle pauses everyone and slows down; the call is retried in place after the
///   pause without spending an attempt, up to ``WorkerConfiguration/maximumThrottledRetries``, then the
///   row is released for later.
/// - 401: the shared token is renewed (one re-login, whoever notices first) and the call retried in place,
///   up to ``WorkerConfiguration/maximumUnauthorizedRetries``.
/// - 400: the row fails permanently with the API's reason.
/// - 5xx, timeouts, dropped connections, undecodable answers: the row goes back to `pending` with a
///   full-jitter backoff, and fails for good after its last attempt.
/// - A login that cannot succeed (invalid credentials) is fatal for the run: ``process(_:)`` throws.
struct ItemProcessor<C: Clock>: Sendable where C.Duration == Duration {
    let client: NymbleClient
    let tokens: any TokenProvider
    let throttle: Throttle<C>
    let configuration: WorkerConfiguration
    let statistics: RunStatistics
    let logger: Logger

    /// The row's outcome. Throws ``WorkerError`` only when no row can succeed (login failure).
    func process(_ item: LeasedItem) async throws(WorkerError) -> ItemResult {
        var throttledRetries = 0
        var unauthorizedRetries = 0
        while true {
            if Task.isCancelled { return .released(item, after: .zero) }
            let sentAt: C.Instant
            do {
                sentAt = try await throttle.acquire()
            } catch {
                return .released(item, after: .zero)  // cancelled while paced: shutdown grace ran out
            }
            let issued: IssuedToken
            do {
                issued = try await tokens.currentToken()
            } catch {
                if Task.isCancelled { return .released(item, after: .zero) }
                throw WorkerError.login(error)
            }
            statistics.update { $0.calls += 1 }
            let answer: CommerceContext
            let callStarted = ContinuousClock.now
            do {
                answer = try await client.access(
                    organizationId: item.pair.organizationId,
                    userId: item.pair.userId,
                    token: issued.token
                )
                statistics.metrics.recordCall(nil, duration: callStarted.duration(to: .now))
            } catch {
                statistics.metrics.recordCall(error.code, duration: callStarted.duration(to: .now))
                if Task.isCancelled { return .released(item, after: .zero) }
                switch error.code {
                case .rateLimited:
                    await throttle.throttled(sentAt: sentAt, retryAfter: error.retryAfter)
                    statistics.update { $0.counters.throttled += 1 }
                    throttledRetries += 1
                    if throttledRetries > configuration.maximumThrottledRetries {
                        return .released(item, after: error.retryAfter ?? configuration.retryBackoff.cap)
                    }
                    continue
                case .unauthorized:
                    await throttle.accepted()
                    await tokens.tokenRejected(issued)
                    statistics.update { $0.unauthorized += 1 }
                    unauthorizedRetries += 1
                    if unauthorizedRetries > configuration.maximumUnauthorizedRetries {
                        statistics.metrics.recordError("unauthorized")
                        return retryLater(item, reason: "\(error) (still 401 after \(unauthorizedRetries) re-logins)")
                    }
                    continue
                case .badRequest:
                    await throttle.accepted()
                    statistics.metrics.recordError(RunMetrics.name(of: error.code))
                    return .failed(.permanent(item, reason: error.description))
                default:
                    await throttle.accepted()
                    statistics.metrics.recordError(RunMetrics.name(of: error.code))
                    return retryLater(item, reason: error.description)
                }
            }
            await throttle.accepted()
            return .done(
                Completion(
                    item: item,
                    context: CommerceContext(
                        customerNumber: answer.customerNumber,
                        priceTier: answer.priceTier,
                        currencyCode: answer.currencyCode
                    )
                )
            )
        }
    }

    /// Back to `pending` after a full-jitter backoff growing with the row's attempts (the queue marks the
    /// row failed instead once this was its last attempt).
    private func retryLater(_ item: LeasedItem, reason: String) -> ItemResult {
        let delay = configuration.retryBackoff.delay(attempt: Int(item.attempt))
        return .failed(Failure(item: item, reason: reason, retryAfter: delay))
    }
}
