import EnrichThrottle
import Logging
import NymbleAPI

/// The one cached login token of a process, shared by every concurrent caller.
///
/// - **Single flight**: when no valid token exists, exactly one caller logs in and every other caller
///   awaits that same login.
/// - **Refresh ahead**: a token is renewed `margin` before it expires; during the renewal the other callers
///   keep using the old token, so nobody stalls and no expired token is sent in the normal case.
/// - **Rejection**: ``tokenRejected(_:)`` drops the token only if it is still the current one.
/// - **Pacing**: logins never exceed ``TokenStoreConfiguration/loginsPerWindow`` per window; a 429 on
///   login waits for its Retry-After (or the window); 401 on login (invalid credentials) is fatal and
///   sticky: every later caller gets the same error at once.
///
/// Time comes from the injected clock, so expiry, refresh and pacing are tested without sleeping.
public actor SharedTokenStore<C: Clock>: TokenProvider where C.Duration == Duration {
    public typealias Login = @Sendable () async throws -> LoginGrant

    private struct Current {
        var issued: IssuedToken
        var expiresAt: C.Instant
        var refreshAt: C.Instant
    }

    private let login: Login
    private let clock: C
    private let configuration: TokenStoreConfiguration
    private let logger: Logger
    private let backoff = Backoff(base: .seconds(1), cap: .seconds(30))

    private var current: Current?
    private var loginInFlight = false
    /// Callers waiting for the login in flight; resumed with its outcome (nil: try again yourself).
    private var waiters: [CheckedContinuation<Result<IssuedToken, any Error>?, Never>] = []
    private var fatalError: NymbleAPIError?
    private var generation = 0
    private var logins = 0
    private var pacer: LoginPacer<C.Instant>

    /// - Parameters:
    ///   - login: performs one `POST /api/auth/login` (normally `{ try await client.login(credentials) }`).
    ///   - clock: the time source (`ContinuousClock()` in production, a manual clock in tests).
    public init(
        configuration: TokenStoreConfiguration = .init(),
        clock: C,
        logger: Logger,
        login: @escaping Login
    ) {
        self.login = login
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.pacer = LoginPacer(limit: configuration.loginsPerWindow, window: configuration.loginWindow)
    }

    public func currentToken() async throws -> IssuedToken {
        while true {
            if let fatalError { throw fatalError }
            try Task.checkCancellation()
            let now = clock.now
            if let current {
                if now < current.refreshAt { return current.issued }
                // Renewal under way and the old token still has time: keep using it.
                if loginInFlight && now < current.expiresAt.advanced(by: .zero - .seconds(1)) { return current.issued }
            }
            if loginInFlight {
                let outcome = await withCheckedContinuation { waiters.append($0) }
                if let outcome { return try outcome.get() }
                continue
            }
            return try await leadLogin()
        }
    }

    public func tokenRejected(_ token: IssuedToken) {
        guard let current, current.issued.generation == token.generation else { return }
        logger.info("token rejected with 401; renewing", metadata: ["generation": "\(token.generation)"])
        self.current = nil
    }

    public func loginCount() -> Int { logins }

    /// Performs the login on behalf of everyone waiting, then wakes them with the outcome.
    private func leadLogin() async throws -> IssuedToken {
        loginInFlight = true
        do {
            let issued = try await loginPaced()
            finish(with: .success(issued))
            return issued
        } catch let error as NymbleAPIError where error.code == .invalidCredentials {
            fatalError = error
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
        loginInFlight = false
        let woken = waiters
        waiters = []
        for waiter in woken { waiter.resume(returning: outcome) }
    }

    private func loginPaced() async throws -> IssuedToken {
        var transientFailures = 0
        var unreachableFailures = 0
        while true {
            let slot = pacer.nextSlot(now: clock.now)
            if slot > clock.now {
                logger.notice(
                    "login limit reached; waiting for a slot",
                    metadata: ["limit": "\(configuration.loginsPerWindow) per \(configuration.loginWindow)"]
                )
                try await clock.sleep(until: slot, tolerance: nil)
            }
            let sentAt = clock.now
            pacer.record(sentAt)
            logins += 1
            do {
                let grant = try await login()
                generation += 1
                let margin = configuration.margin(forLifetime: grant.expiresIn)
                let expiresAt = sentAt.advanced(by: grant.expiresIn)
                let issued = IssuedToken(token: grant.token, generation: generation)
                current = Current(
                    issued: issued,
                    expiresAt: expiresAt,
                    refreshAt: expiresAt.advanced(by: .zero - margin)
                )
                logger.info(
                    "logged in",
                    metadata: ["expires_in": "\(grant.expiresIn)", "generation": "\(generation)"]
                )
                return issued
            } catch let error as NymbleAPIError where error.code == .rateLimited {
                // Without a Retry-After, wait out a whole window: another process may share the ClientId.
                let wait = min(error.retryAfter ?? configuration.loginWindow, configuration.maximumRetryAfter)
                logger.warning("login answered 429; waiting", metadata: ["wait": "\(wait)"])
                try await clock.sleep(until: clock.now.advanced(by: max(wait, .seconds(1))), tolerance: nil)
            } catch let error as NymbleAPIError where error.code == .unreachable {
                // Nothing listens at the API's address: a few quick tries (a restart), then give up.
                unreachableFailures += 1
                if unreachableFailures >= configuration.maximumUnreachableLoginAttempts { throw error }
                let wait = Duration.milliseconds(250) * unreachableFailures
                logger.warning("login could not connect; retrying", metadata: ["error": "\(error)", "wait": "\(wait)"])
                try await clock.sleep(until: clock.now.advanced(by: wait), tolerance: nil)
            } catch let error as NymbleAPIError where error.isTransient || error.code == .undecodable {
                transientFailures += 1
                if transientFailures >= configuration.maximumLoginAttempts { throw error }
                let wait = backoff.delay(attempt: transientFailures)
                logger.warning("login failed; retrying", metadata: ["error": "\(error)", "wait": "\(wait)"])
                try await clock.sleep(until: clock.now.advanced(by: wait), tolerance: nil)
            }
        }
    }
}
