import Logging
import NymbleAPI
import Synchronization

/// The one cached token of a process, shared by every concurrent caller, from a ``TokenSource`` (a login of
/// its own, or the fleet's shared token).
///
/// - **Single flight**: when no valid token exists, exactly one caller asks the source and every other
///   caller awaits that same answer.
/// - **Refresh ahead**: a token is renewed when the source said (before it expires); during the renewal the
///   other callers keep using the old token, so nobody stalls and no expired token is sent in the normal
///   case.
/// - **Rejection**: ``tokenRejected(_:)`` drops the token only if it is still the current one.
/// - **Invalid credentials** (a 401 on login) are fatal and sticky: every later caller gets the same error
///   at once.
///
/// - **No hop on the hot path**: the current token and when to renew it are published under a lock, so a
///   caller holding a token that needs no renewal reads it without entering the actor.
///
/// Time comes from the injected clock, so expiry, refresh and pacing are tested without sleeping.
public actor SharedTokenStore<C: Clock>: TokenProvider where C.Duration == Duration {
    public typealias Login = @Sendable () async throws -> LoginGrant

    private struct Current {
        var issued: IssuedToken
        var expiresAt: C.Instant
        var refreshAt: C.Instant
    }

    private let source: any TokenSource
    private let clock: C
    private let logger: Logger

    private var current: Current? {
        didSet { published.withLock { $0 = current.map { ($0.issued, $0.refreshAt) } } }
    }
    /// ``current`` as callers read it without entering the actor.
    private let published = Mutex<(issued: IssuedToken, refreshAt: C.Instant)?>(nil)
    private var fetchInFlight = false
    /// Callers waiting for the fetch in flight; resumed with its outcome (nil: try again yourself).
    private var waiters: [CheckedContinuation<Result<IssuedToken, any Error>?, Never>] = []
    private var fatalError: NymbleAPIError?

    /// A store whose tokens come from `source`.
    public init(source: any TokenSource, clock: C, logger: Logger) {
        self.source = source
        self.clock = clock
        self.logger = logger
    }

    /// A store that logs in (and renews, and logs out) itself as `authenticator` says (``LoginTokenSource``).
    public init(
        configuration: TokenStoreConfiguration = .init(),
        clock: C,
        logger: Logger,
        authenticator: Authenticator
    ) {
        self.init(
            source: LoginTokenSource(
                configuration: configuration,
                clock: clock,
                logger: logger,
                authenticator: authenticator
            ),
            clock: clock,
            logger: logger
        )
    }

    /// A store that logs in itself (``LoginTokenSource``).
    /// - Parameters:
    ///   - login: performs one `POST /api/auth/login` (normally `{ try await client.login(credentials) }`).
    ///   - clock: the time source (`ContinuousClock()` in production, a manual clock in tests).
    public init(
        configuration: TokenStoreConfiguration = .init(),
        clock: C,
        logger: Logger,
        login: @escaping Login
    ) {
        self.init(
            source: LoginTokenSource(configuration: configuration, clock: clock, logger: logger, login: login),
            clock: clock,
            logger: logger
        )
    }

    /// The current token, read under a lock while it needs no renewal; otherwise from the actor (which
    /// renews it, one caller for all).
    public nonisolated func currentToken() async throws -> IssuedToken {
        let now = clock.now
        if let (issued, refreshAt) = published.withLock({ $0 }), now < refreshAt { return issued }
        return try await renewingToken()
    }

    private func renewingToken() async throws -> IssuedToken {
        while true {
            if let fatalError { throw fatalError }
            try Task.checkCancellation()
            let now = clock.now
            if let current {
                if now < current.refreshAt { return current.issued }
                // Renewal under way and the old token still has time: keep using it.
                if fetchInFlight && now < current.expiresAt.advanced(by: .seconds(-1)) { return current.issued }
            }
            if fetchInFlight {
                let outcome = await withCheckedContinuation { waiters.append($0) }
                if let outcome { return try outcome.get() }
                continue
            }
            return try await leadFetch()
        }
    }

    public func tokenRejected(_ token: IssuedToken) async {
        guard let current, current.issued.generation == token.generation else { return }
        logger.info("token rejected with 401; renewing", metadata: ["generation": "\(token.generation)"])
        self.current = nil
        await source.rejected(token)
    }

    public func loginCount() async -> Int { await source.loginCount() }

    /// Forgets the token and lets the source end the session (log out) where the dialect wants it.
    public func endSession(deadline: Duration) async {
        current = nil
        await source.endSession(deadline: deadline)
    }

    /// Asks the source on behalf of everyone waiting, then wakes them with the outcome.
    private func leadFetch() async throws -> IssuedToken {
        fetchInFlight = true
        do {
            let fetched = try await source.fetch()
            let now = clock.now
            current = Current(
                issued: fetched.issued,
                expiresAt: now.advanced(by: fetched.expiresIn),
                refreshAt: now.advanced(by: fetched.renewIn)
            )
            finish(with: .success(fetched.issued))
            return fetched.issued
        } catch let error as NymbleAPIError where error.code == .invalidCredentials {
            fatalError = error
            current = nil
            finish(with: .failure(error))
            throw error
        } catch is CancellationError {
            finish(with: nil)
            throw CancellationError()
        } catch {
            finish(with: .failure(error))
            throw error
        }
    }

    private func finish(with outcome: Result<IssuedToken, any Error>?) {
        fetchInFlight = false
        let woken = waiters
        waiters = []
        for waiter in woken { waiter.resume(returning: outcome) }
    }
}
