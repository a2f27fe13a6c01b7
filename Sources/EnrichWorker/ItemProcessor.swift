import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import NymbleAPI

/// What became of one claimed row.
enum ItemResult: Sendable {
    /// The API answered: write the commerce context back and mark the row done.
    case done(Completion)
    /// The call failed: permanently (400) or for a later attempt (5xx, timeout, ...).
    case failed(Failure)
    /// Not the row's fault (429 bound, shutdown): back to pending without spending an attempt.
    case released(Release)
}

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
    let context: RunContext<C>
    let api: any EnrichmentAPI
    let tokens: any TokenProvider
    let throttle: Throttle<C>
    private var configuration: WorkerConfiguration { context.configuration }
    private var accounting: RunAccounting { context.accounting }
    private var clock: C { context.clock }

    /// The row's outcome. Throws ``WorkerError`` only when no row can succeed (login failure).
    func process(_ item: LeasedItem) async throws(WorkerError) -> ItemResult {
        var throttledRetries = 0
        var unauthorizedRetries = 0
        while true {
            if Task.isCancelled { return .released(Release(item: item, after: .zero)) }
            let sentAt: C.Instant
            do {
                sentAt = try await throttle.acquire()
            } catch {
                return .released(Release(item: item, after: .zero))  // cancelled while paced: grace ran out
            }
            let issued: IssuedToken
            do {
                issued = try await tokens.currentToken()
            } catch {
                if Task.isCancelled { return .released(Release(item: item, after: .zero)) }
                throw WorkerError.login(error)
            }
            let callStarted = clock.now
            let answer: CommerceContext
            do {
                answer = try await api.enrich(item.pair, token: issued.token)
                accounting.called(nil, duration: callStarted.duration(to: clock.now))
            } catch {
                accounting.called(error.code, duration: callStarted.duration(to: clock.now))
                if Task.isCancelled { return .released(Release(item: item, after: .zero)) }
                switch error.code {
                case .rateLimited:
                    await throttle.throttled(sentAt: sentAt, retryAfter: error.retryAfter)
                    throttledRetries += 1
                    if throttledRetries > configuration.maximumThrottledRetries {
                        return .released(Release(item: item, after: error.retryAfter ?? configuration.retryBackoff.cap))
                    }
                    continue
                case .unauthorized:
                    throttle.accepted()
                    await tokens.tokenRejected(issued)
                    unauthorizedRetries += 1
                    if unauthorizedRetries > configuration.maximumUnauthorizedRetries {
                        accounting.attemptFailed("unauthorized")
                        return retryLater(item, reason: "\(error) (still 401 after \(unauthorizedRetries) re-logins)")
                    }
                    continue
                case .badRequest:
                    throttle.accepted()
                    accounting.attemptFailed(RunMetrics.name(of: error.code))
                    return .failed(.permanent(item, reason: error.description))
                default:
                    throttle.accepted()
                    accounting.attemptFailed(RunMetrics.name(of: error.code))
                    return retryLater(item, reason: error.description)
                }
            }
            throttle.accepted()
            return .done(Completion(item: item, context: answer))
        }
    }

    /// Back to `pending` after a full-jitter backoff growing with the row's attempts (the queue marks the
    /// row failed instead once this was its last attempt).
    private func retryLater(_ item: LeasedItem, reason: String) -> ItemResult {
        let delay = configuration.retryBackoff.delay(attempt: Int(item.attempt))
        return .failed(Failure(item: item, reason: reason, retryAfter: delay))
    }
}
