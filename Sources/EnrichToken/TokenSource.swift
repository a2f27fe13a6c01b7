import EnrichThrottle
import Logging
import NymbleAPI

/// Where a ``SharedTokenStore`` gets a token when its own has run out: a login of this process
/// (``LoginTokenSource``), or the token the workers of a fleet share (`FleetTokenSource` in EnrichFleet). The
/// store calls it once at a time and keeps the answer until `renewIn` has passed.
public protocol TokenSource: Sendable {
    /// A token valid now.
    func fetch() async throws -> FetchedToken
    /// The API refused `token` with 401 (reported once per generation, while it was the current one).
    func rejected(_ token: IssuedToken) async
    /// Logins this process performed.
    func loginCount() async -> Int
    /// Ends the API session at shutdown where the dialect wants it (``Authenticator/logout``): forgets the
    /// tokens and logs out, within `deadline`. A fleet's source does so only as its last worker.
    func endSession(deadline: Duration) async
}

/// How a dialect's session is opened, renewed and closed, as the token sources use it: the API client's
/// login, refresh and logout bound to the credentials (see `NymbleClient`). Only `login` is required.
public struct Authenticator: Sendable {
    public typealias Login = @Sendable () async throws -> LoginGrant
    public var login: Login
    /// Renews with a refresh token (B2B; it rotates, so each is used once). nil: renewal is a new login.
    public var refresh: (@Sendable (AccessToken) async throws -> LoginGrant)?
    /// Ends the session at shutdown (AchieveApex: `DELETE /authentication`; B2B: nothing to send, the tokens
    /// are forgotten). nil: the token stays valid for the next run (Nymble).
    public var logout: (@Sendable (AccessToken) async throws -> Void)?

    public init(
        login: @escaping Login,
        refresh: (@Sendable (AccessToken) async throws -> LoginGrant)? = nil,
        logout: (@Sendable (AccessToken) async throws -> Void)? = nil
    ) {
        self.login = login
        self.refresh = refresh
        self.logout = logout
    }
}

extension Authenticator {
    /// `client`'s login conversation for `credentials`: its refresh when the dialect renews with a refresh
    /// token, its logout when the dialect ends the session at shutdown.
    public init(client: NymbleClient, credentials: APICredentials) {
        var refresh: (@Sendable (AccessToken) async throws -> LoginGrant)?
        if client.auth.renewsWithRefreshToken {
            refresh = { token in try await client.refresh(token) }
        }
        var logout: (@Sendable (AccessToken) async throws -> Void)?
        if client.auth.endsSessionAtShutdown {
            logout = { token in _ = try await client.logout(token) }
        }
        self.init(login: { try await client.login(credentials) }, refresh: refresh, logout: logout)
    }
}

/// Runs `body`, giving up (and cancelling it) after `deadline`: for the best-effort steps of a shutdown.
/// Returns whether `body` finished without an error in time.
@discardableResult
public func bestEffort(within deadline: Duration, _ body: @escaping @Sendable () async throws -> Void) async -> Bool {
    await withTaskGroup(of: Bool.self) { group in
        group.addTask {
            do {
                try await body()
                return true
            } catch {
                return false
            }
        }
        group.addTask {
            try? await Task.sleep(for: deadline)
            return false
        }
        let finished = await group.next() ?? false
        group.cancelAll()
        return finished
    }
}

/// A token a ``TokenSource`` handed over, with its timing as durations from now.
public struct FetchedToken: Sendable {
    public var issued: IssuedToken
    /// Time left before it expires.
    public var expiresIn: Duration
    /// When the store should ask the source again (before `expiresIn`: refresh ahead).
    public var renewIn: Duration

    public init(issued: IssuedToken, expiresIn: Duration, renewIn: Duration) {
        self.issued = issued
        self.expiresIn = expiresIn
        self.renewIn = renewIn
    }

    /// `grant` as the login (or refresh) of `generation` handed it over, answered `elapsed` after it was sent
    /// and renewed `margin` before it expires.
    public init(_ grant: LoginGrant, generation: Int, elapsed: Duration, margin: Duration) {
        let expiresIn = grant.expiresIn - elapsed
        self.init(
            issued: IssuedToken(token: grant.token, generation: generation),
            expiresIn: expiresIn,
            renewIn: expiresIn - margin
        )
    }
}

/// What to do after a failed login: the same policy for a process on its own and for a fleet's login
/// holder. A 429 waits for its Retry-After (or a whole login window: another process may share the
/// ClientId); an unreachable API gets a few quick tries; 5xx, timeouts and undecodable answers a backoff;
/// anything else (refused credentials included) is thrown.
public struct LoginRetries: Sendable {
    private let configuration: TokenStoreConfiguration
    private let backoff = Backoff(base: .seconds(1), cap: .seconds(30))
    private var transientFailures = 0
    private var unreachableFailures = 0

    public init(configuration: TokenStoreConfiguration) { self.configuration = configuration }

    /// How long to wait before the next login attempt; throws `error` when there is to be none.
    public mutating func wait(after error: any Error, logger: Logger) throws -> Duration {
        guard let error = error as? NymbleAPIError else { throw error }
        let wait: Duration
        switch error.code {
        case .rateLimited:
            wait = max(min(error.retryAfter ?? configuration.loginWindow, configuration.maximumRetryAfter), .seconds(1))
            logger.warning("login answered 429; waiting", metadata: ["wait": "\(wait)"])
        case .unreachable:
            unreachableFailures += 1
            if unreachableFailures >= configuration.maximumUnreachableLoginAttempts { throw error }
            wait = .milliseconds(250) * unreachableFailures
            logger.warning("login could not connect; retrying", metadata: ["error": "\(error)", "wait": "\(wait)"])
        default:
            guard error.isTransient || error.code == .undecodable else { throw error }
            transientFailures += 1
            if transientFailures >= configuration.maximumLoginAttempts { throw error }
            wait = backoff.delay(attempt: transientFailures)
            logger.warning("login failed; retrying", metadata: ["error": "\(error)", "wait": "\(wait)"])
        }
        return wait
    }
}

/// Logs in with this process's credentials, keeping to the login limit (``LoginPacer``) and retrying as
/// ``LoginRetries`` says; renews with the refresh token instead while the dialect has a valid one.
public actor LoginTokenSource<C: Clock>: TokenSource where C.Duration == Duration {
    public typealias Login = @Sendable () async throws -> LoginGrant

    private let authenticator: Authenticator
    private let clock: C
    private let configuration: TokenStoreConfiguration
    private let logger: Logger
    private var pacer: LoginPacer<C.Instant>
    private var generation = 0
    private var logins = 0
    private var refreshes = 0
    /// The refresh token of the last grant, until it is used (it rotates) or expires.
    private var refreshToken: (token: AccessToken, expiresAt: C.Instant)?
    /// The last token handed out, for the logout at shutdown.
    private var lastToken: AccessToken?

    public init(configuration: TokenStoreConfiguration, clock: C, logger: Logger, authenticator: Authenticator) {
        self.authenticator = authenticator
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.pacer = LoginPacer(limit: configuration.loginsPerWindow, window: configuration.loginWindow)
    }

    public init(configuration: TokenStoreConfiguration, clock: C, logger: Logger, login: @escaping Login) {
        self.init(
            configuration: configuration,
            clock: clock,
            logger: logger,
            authenticator: Authenticator(login: login)
        )
    }

    public func rejected(_ token: IssuedToken) {}

    public func loginCount() -> Int { logins }

    /// Renewals with a refresh token so far.
    public func refreshCount() -> Int { refreshes }

    public func endSession(deadline: Duration) async {
        guard let logout = authenticator.logout, let token = lastToken else { return }
        lastToken = nil
        refreshToken = nil
        if await bestEffort(within: deadline, { try await logout(token) }) {
            logger.info("API session ended")
        } else {
            logger.warning(
                "could not end the API session (an error, or no answer in time); the token expires on its own"
            )
        }
    }

    public func fetch() async throws -> FetchedToken {
        if let refreshed = try await refreshed() { return refreshed }
        var retries = LoginRetries(configuration: configuration)
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
                let grant = try await authenticator.login()
                logger.info(
                    "logged in",
                    metadata: ["expires_in": "\(grant.expiresIn)", "generation": "\(generation + 1)"]
                )
                return accept(grant, sentAt: sentAt)
            } catch {
                let wait = try retries.wait(after: error, logger: logger)
                try await clock.sleep(until: clock.now.advanced(by: wait), tolerance: nil)
            }
        }
    }

    /// A renewal with the refresh token, while there is one with time left; nil when there is none or the
    /// API refused it (then a login follows). The token is dropped before it is sent: it rotates, so it is
    /// never sent twice.
    private func refreshed() async throws -> FetchedToken? {
        guard let refresh = authenticator.refresh, let current = refreshToken else { return nil }
        refreshToken = nil
        guard clock.now.duration(to: current.expiresAt) > TokenStoreConfiguration.minimumRefreshTokenLife else {
            return nil
        }
        let sentAt = clock.now
        do {
            let grant = try await refresh(current.token)
            refreshes += 1
            logger.info(
                "token refreshed",
                metadata: ["expires_in": "\(grant.expiresIn)", "generation": "\(generation + 1)"]
            )
            return accept(grant, sentAt: sentAt)
        } catch {
            if Task.isCancelled { throw CancellationError() }
            logger.notice("refresh failed; logging in instead", metadata: ["error": "\(error)"])
            return nil
        }
    }

    private func accept(_ grant: LoginGrant, sentAt: C.Instant) -> FetchedToken {
        generation += 1
        let elapsed = sentAt.duration(to: clock.now)
        if let token = grant.refreshToken, let life = grant.refreshExpiresIn {
            refreshToken = (token, sentAt.advanced(by: life))
        }
        lastToken = grant.token
        return FetchedToken(
            grant,
            generation: generation,
            elapsed: elapsed,
            margin: configuration.margin(forLifetime: grant.expiresIn)
        )
    }
}
