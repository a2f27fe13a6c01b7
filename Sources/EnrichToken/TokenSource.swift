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
/// ``LoginRetries`` says.
public actor LoginTokenSource<C: Clock>: TokenSource where C.Duration == Duration {
    public typealias Login = @Sendable () async throws -> LoginGrant

    private let login: Login
    private let clock: C
    private let configuration: TokenStoreConfiguration
    private let logger: Logger
    private var pacer: LoginPacer<C.Instant>
    private var generation = 0
    private var logins = 0

    public init(configuration: TokenStoreConfiguration, clock: C, logger: Logger, login: @escaping Login) {
        self.login = login
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.pacer = LoginPacer(limit: configuration.loginsPerWindow, window: configuration.loginWindow)
    }

    public func rejected(_ token: IssuedToken) {}

    public func loginCount() -> Int { logins }

    public func fetch() async throws -> FetchedToken {
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
                let grant = try await login()
                generation += 1
                logger.info("logged in", metadata: ["expires_in": "\(grant.expiresIn)", "generation": "\(generation)"])
                let expiresIn = grant.expiresIn - sentAt.duration(to: clock.now)
                return FetchedToken(
                    issued: IssuedToken(token: grant.token, generation: generation),
                    expiresIn: expiresIn,
                    renewIn: expiresIn - configuration.margin(forLifetime: grant.expiresIn)
                )
            } catch {
                let wait = try retries.wait(after: error, logger: logger)
                try await clock.sleep(until: clock.now.advanced(by: wait), tolerance: nil)
            }
        }
    }
}
