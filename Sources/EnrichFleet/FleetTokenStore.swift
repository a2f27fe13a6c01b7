import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import NymbleAPI

/// The login token every worker of a fleet shares through PostgreSQL (``FleetCredentials``), behind the
/// same interface as the in-process ``SharedTokenStore``:
///
/// - **One login for the fleet**: a worker without a valid token reads the shared one; only the holder of
///   the login lease logs in (a worker that dies mid-login loses the lease when it expires), and the
///   others look again every 100 ms until the new generation appears.
/// - **Refresh ahead**: the lease holder renews `margin` before expiry while everyone keeps using the old
///   token.
/// - **401**: the token's generation is expired for the fleet only if it is still current, so any number
///   of 401s to one token, in any number of processes, cause one login.
/// - **Login limit fleet-wide**: the lease holder waits until the fleet's logins of the last window allow
///   another (10 per minute per ClientId by default).
/// - **Refused credentials** are recorded with a fingerprint of the secret: every worker with that secret
///   stops at once with the same message, until one logs in with another secret.
///
/// The token is stored sealed (``TokenSeal``). Within a process, callers share one lookup at a time.
public actor FleetTokenStore<C: Clock>: TokenProvider where C.Duration == Duration {
    public typealias Login = @Sendable () async throws -> LoginGrant

    private struct Current {
        var issued: IssuedToken
        var expiresAt: C.Instant
        var refreshAt: C.Instant
    }

    private let credentials: FleetCredentials
    private let seal: TokenSeal
    private let owner: String
    private let login: Login
    private let clock: C
    private let configuration: TokenStoreConfiguration
    private let databaseRetryLimit: Duration
    private let logger: Logger
    private let backoff = Backoff(base: .seconds(1), cap: .seconds(30))
    /// How often a worker looks again while another one logs in.
    private let pollInterval = Duration.milliseconds(100)
    /// How long a login lease lasts (renewed before each login request).
    private let lease = Duration.seconds(30)

    private var current: Current?
    private var lookupInFlight = false
    private var waiters: [CheckedContinuation<Result<IssuedToken, any Error>?, Never>] = []
    private var fatalError: NymbleAPIError?
    /// Tokens of this generation or older are not used again (this process saw a 401 for them).
    private var rejectedGeneration: Int64 = 0
    private var logins = 0

    /// - Parameters:
    ///   - owner: this worker's name in the login lease (host, pid, run).
    ///   - databaseRetryLimit: how long the shared row may stay unreachable before a lookup fails.
    ///   - login: performs one `POST /api/auth/login`.
    public init(
        credentials: FleetCredentials,
        seal: TokenSeal,
        owner: String,
        configuration: TokenStoreConfiguration = .init(),
        databaseRetryLimit: Duration,
        clock: C,
        logger: Logger,
        login: @escaping Login
    ) {
        self.credentials = credentials
        self.seal = seal
        self.owner = owner
        self.configuration = configuration
        self.databaseRetryLimit = databaseRetryLimit
        self.clock = clock
        self.logger = logger
        self.login = login
    }

    public func currentToken() async throws -> IssuedToken {
        while true {
            if let fatalError { throw fatalError }
            try Task.checkCancellation()
            let now = clock.now
            if let current {
                if now < current.refreshAt { return current.issued }
                // A lookup or renewal is under way and the old token still has time: keep using it.
                if lookupInFlight && now < current.expiresAt.advanced(by: .seconds(-1)) { return current.issued }
            }
            if lookupInFlight {
                let outcome = await withCheckedContinuation { waiters.append($0) }
                if let outcome { return try outcome.get() }
                continue
            }
            return try await leadLookup()
        }
    }

    public func tokenRejected(_ token: IssuedToken) async {
        guard let current, current.issued.generation == token.generation else { return }
        logger.info("token rejected with 401; renewing for the fleet", metadata: ["generation": "\(token.generation)"])
        self.current = nil
        rejectedGeneration = max(rejectedGeneration, Int64(token.generation))
        try? await credentials.expire(generation: Int64(token.generation))
    }

    /// Logins this process performed for the fleet.
    public func loginCount() -> Int { logins }

    private func leadLookup() async throws -> IssuedToken {
        lookupInFlight = true
        do {
            let issued = try await obtain()
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
        lookupInFlight = false
        let woken = waiters
        waiters = []
        for waiter in woken { waiter.resume(returning: outcome) }
    }

    /// Takes the fleet's token, waits for the worker logging in, or logs in with the lease.
    private func obtain() async throws -> IssuedToken {
        var transientFailures = 0
        var unreachableFailures = 0
        while true {
            try Task.checkCancellation()
            let snapshot = try await retryingDatabase { try await credentials.read(owner: owner) }
            if let refused = snapshot.refused, refused.fingerprint == seal.fingerprint {
                throw NymbleAPIError(
                    .invalidCredentials,
                    endpoint: "login",
                    detail: "refused for the fleet: \(refused.message)"
                )
            }
            if let adopted = adopt(snapshot) { return adopted }
            let generation = snapshot.generation
            // Logins are counted when sent; a margin keeps a slow earlier login from arriving inside the window.
            let limit = configuration.loginsPerWindow
            let window = configuration.loginWindow + max(.milliseconds(500), configuration.loginWindow / 20)
            guard
                let wait = try await retryingDatabase({
                    try await credentials.takeLoginLease(
                        owner: owner,
                        generation: generation,
                        lease: lease,
                        limit: limit,
                        window: window
                    )
                })
            else {
                try await clock.sleep(for: pollInterval)  // another worker is logging in
                continue
            }
            if wait > .zero {
                logger.notice(
                    "the fleet's login limit is reached; waiting for a slot",
                    metadata: ["limit": "\(limit) per \(window)", "wait": "\(wait)"]
                )
                try await clock.sleep(for: min(wait, lease / 2))
                continue
            }
            try await retryingDatabase { try await credentials.recordLoginAttempt(owner: owner, lease: lease) }
            logins += 1
            let sentAt = clock.now
            do {
                let grant = try await login()
                let sealed = try seal.seal(grant.token.bearerValue)
                let margin = configuration.margin(forLifetime: grant.expiresIn)
                let sentAgo = sentAt.duration(to: clock.now)
                let stored = try await retryingDatabase {
                    try await credentials.storeToken(
                        sealed: sealed,
                        lifetime: grant.expiresIn,
                        margin: margin,
                        sentAgo: sentAgo
                    )
                }
                let issued = IssuedToken(token: grant.token, generation: Int(stored))
                let expiresAt = sentAt.advanced(by: grant.expiresIn)
                current = Current(
                    issued: issued,
                    expiresAt: expiresAt,
                    refreshAt: expiresAt.advanced(by: .zero - margin)
                )
                logger.info(
                    "logged in",
                    metadata: ["expires_in": "\(grant.expiresIn)", "generation": "\(stored)", "shared": "fleet"]
                )
                return issued
            } catch let error as NymbleAPIError where error.code == .invalidCredentials {
                try? await credentials.recordRefusal(fingerprint: seal.fingerprint, message: error.description)
                throw error
            } catch let error as NymbleAPIError {
                try? await credentials.releaseLoginLease(owner: owner)
                let wait: Duration
                switch error.code {
                case .rateLimited:
                    wait = max(
                        min(error.retryAfter ?? configuration.loginWindow, configuration.maximumRetryAfter),
                        .seconds(1)
                    )
                    logger.warning("login answered 429; waiting", metadata: ["wait": "\(wait)"])
                case .unreachable:
                    unreachableFailures += 1
                    if unreachableFailures >= configuration.maximumUnreachableLoginAttempts { throw error }
                    wait = .milliseconds(250) * unreachableFailures
                    logger.warning(
                        "login could not connect; retrying",
                        metadata: ["error": "\(error)", "wait": "\(wait)"]
                    )
                default:
                    guard error.isTransient || error.code == .undecodable else { throw error }
                    transientFailures += 1
                    if transientFailures >= configuration.maximumLoginAttempts { throw error }
                    wait = backoff.delay(attempt: transientFailures)
                    logger.warning("login failed; retrying", metadata: ["error": "\(error)", "wait": "\(wait)"])
                }
                try await clock.sleep(for: wait)
            } catch {
                try? await credentials.releaseLoginLease(owner: owner)
                throw error
            }
        }
    }

    /// Uses the shared token when it is valid, not rejected here, and either not due for renewal or being
    /// renewed by another worker (then looked at again shortly).
    private func adopt(_ snapshot: FleetCredentials.Snapshot) -> IssuedToken? {
        guard let sealed = snapshot.sealedToken, snapshot.generation > rejectedGeneration,
            let expiresIn = snapshot.expiresIn, expiresIn > .seconds(2), let refreshIn = snapshot.refreshIn,
            refreshIn > .zero || snapshot.loginUnderWay,
            let token = seal.open(sealed)  // nil: sealed under another secret; log in with ours
        else { return nil }
        let now = clock.now
        let issued = IssuedToken(token: AccessToken(token), generation: Int(snapshot.generation))
        let lookAgain = refreshIn > .zero ? refreshIn : min(pollInterval * 3, expiresIn - .seconds(2))
        current = Current(
            issued: issued,
            expiresAt: now.advanced(by: expiresIn),
            refreshAt: now.advanced(by: lookAgain)
        )
        return issued
    }

    /// Runs a statement on the shared row, retrying transient failures for up to the retry limit.
    private func retryingDatabase<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        let started = clock.now
        var failures = 0
        while true {
            do {
                return try await body()
            } catch let error as DatabaseError where error.isTransient {
                failures += 1
                if started.duration(to: clock.now) >= databaseRetryLimit { throw error }
                try await clock.sleep(for: min(.milliseconds(250) * failures, .seconds(2)))
            }
        }
    }
}
