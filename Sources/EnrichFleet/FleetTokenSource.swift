import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Logging
import NymbleAPI

/// The login token every worker of a fleet shares through PostgreSQL (``FleetCredentials``), as the
/// ``TokenSource`` of a process's ``SharedTokenStore``:
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
/// - **Refresh tokens** (B2B): the lease holder renews with the fleet's refresh token while it is valid,
///   taking it out of the row in the same statement (it rotates: it is never sent twice), and logs in when
///   there is none or the API refuses it.
/// - **End of session** (B2B, AchieveApex): the last worker of the schema to stop clears the tokens and
///   logs out where the API offers it.
///
/// Tokens are stored sealed (``TokenSeal``).
public actor FleetTokenSource<C: Clock>: TokenSource where C.Duration == Duration {
    public typealias Login = @Sendable () async throws -> LoginGrant

    private let credentials: FleetCredentials
    private let seal: TokenSeal
    private let owner: String
    private let authenticator: Authenticator
    private let clock: C
    private let configuration: TokenStoreConfiguration
    private let databaseRetryLimit: Duration
    /// A run of the schema whose heartbeat is older (and that has no liveness lock) is not live: used to
    /// tell whether this worker is the fleet's last.
    private let staleAfter: Duration
    private let logger: Logger
    /// How often a worker looks again while another one logs in.
    private let pollInterval = Duration.milliseconds(100)
    /// How long a login lease lasts (renewed before each login or refresh request): longer than such a request
    /// may take, so that no other worker logs in while one is on its way.
    private let lease: Duration

    /// Tokens of this generation or older are not used again (this process saw a 401 for them).
    private var rejectedGeneration: Int64 = 0
    private var logins = 0
    private var refreshes = 0

    /// - Parameters:
    ///   - owner: this worker's name in the login lease (host, pid).
    ///   - databaseRetryLimit: how long the shared row may stay unreachable before a fetch fails.
    ///   - login: performs one `POST /api/auth/login`.
    public init(
        credentials: FleetCredentials,
        seal: TokenSeal,
        owner: String,
        configuration: TokenStoreConfiguration = .init(),
        databaseRetryLimit: Duration,
        staleAfter: Duration = .seconds(60),
        loginLease: Duration = .seconds(30),
        clock: C,
        logger: Logger,
        authenticator: Authenticator
    ) {
        self.staleAfter = staleAfter
        self.lease = loginLease
        self.credentials = credentials
        self.seal = seal
        self.owner = owner
        self.configuration = configuration
        self.databaseRetryLimit = databaseRetryLimit
        self.clock = clock
        self.logger = logger
        self.authenticator = authenticator
    }

    /// A source whose renewal is a login (`login` performs one).
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
        self.init(
            credentials: credentials,
            seal: seal,
            owner: owner,
            configuration: configuration,
            databaseRetryLimit: databaseRetryLimit,
            clock: clock,
            logger: logger,
            authenticator: Authenticator(login: login)
        )
    }

    public func rejected(_ token: IssuedToken) async {
        rejectedGeneration = max(rejectedGeneration, Int64(token.generation))
        try? await credentials.expire(generation: Int64(token.generation))
    }

    /// Logins this process performed for the fleet.
    public func loginCount() -> Int { logins }

    /// Renewals with the fleet's refresh token this process performed.
    public func refreshCount() -> Int { refreshes }

    public func endSession(deadline: Duration) async {
        guard let logout = authenticator.logout else { return }
        let seal = seal
        let ended = await bestEffort(within: deadline) { [credentials, logger, staleAfter] in
            guard let sealed = try await credentials.endSession(staleAfter: staleAfter) else { return }
            logger.info("the fleet's last worker ends the API session")
            if let token = seal.open(sealed) { try await logout(AccessToken(token)) }
        }
        if !ended {
            logger.warning(
                "could not end the API session (an error, or no answer in time); the token expires on its own"
            )
        }
    }

    /// Takes the fleet's token, waits for the worker logging in, or logs in with the lease.
    public func fetch() async throws -> FetchedToken {
        var retries = LoginRetries(configuration: configuration)
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
            switch try await refreshed(snapshot) {
            case .renewed(let token): return token
            // Refused: look again (another worker may have renewed meanwhile, and the lease and the login
            // limit are taken afresh); the refresh token is spent, so the next round logs in.
            case .refused: continue
            case .notTried: break
            }
            if wait > .zero {
                logger.notice(
                    "the fleet's login limit is reached; waiting for a slot",
                    metadata: ["limit": "\(limit) per \(window)", "wait": "\(wait)"]
                )
                try await clock.sleep(for: min(wait, lease / 2))
                continue
            }
            // The lease may have lapsed meanwhile (a slow refresh or database) and another worker logged in.
            guard try await retryingDatabase({ try await credentials.recordLoginAttempt(owner: owner, lease: lease) })
            else { continue }
            logins += 1
            let sentAt = clock.now
            do {
                let grant = try await authenticator.login()
                return try await store(grant, sentAt: sentAt, refreshed: false)
            } catch let error as NymbleAPIError where error.code == .invalidCredentials {
                try? await credentials.recordRefusal(fingerprint: seal.fingerprint, message: error.description)
                throw error
            } catch {
                try? await credentials.releaseLoginLease(owner: owner)
                let wait = try retries.wait(after: error, logger: logger)
                try await clock.sleep(for: wait)
            }
        }
    }

    private enum Refresh {
        case notTried
        case refused
        case renewed(FetchedToken)
    }

    /// Renews with the fleet's refresh token when it has one with time left, as the lease holder. The token
    /// is taken out of the row before it is sent, so it is never sent twice, even if the lease lapses.
    private func refreshed(_ snapshot: FleetCredentials.Snapshot) async throws -> Refresh {
        guard let refresh = authenticator.refresh, snapshot.sealedRefreshToken != nil,
            let life = snapshot.refreshTokenExpiresIn, life > TokenStoreConfiguration.minimumRefreshTokenLife,
            let sealed = try await retryingDatabase({
                try await credentials.takeRefreshToken(owner: owner, lease: lease)
            }),
            let token = seal.open(sealed)
        else { return .notTried }
        let sentAt = clock.now
        let grant: LoginGrant
        do {
            grant = try await refresh(AccessToken(token))
        } catch {
            if Task.isCancelled { throw CancellationError() }
            logger.notice("refresh failed; logging in instead", metadata: ["error": "\(error)"])
            return .refused
        }
        refreshes += 1
        do {
            return .renewed(try await store(grant, sentAt: sentAt, refreshed: true))
        } catch {
            try? await credentials.releaseLoginLease(owner: owner)  // the others need not wait for it to lapse
            throw error
        }
    }

    /// Stores a grant for the fleet (sealed) and hands it out.
    private func store(_ grant: LoginGrant, sentAt: C.Instant, refreshed: Bool) async throws -> FetchedToken {
        let sealed = try seal.seal(grant.token.bearerValue)
        let refreshToken = try grant.refreshToken.map { token in
            (sealed: try seal.seal(token.bearerValue), lifetime: grant.refreshExpiresIn ?? .zero)
        }
        let margin = configuration.margin(forLifetime: grant.expiresIn)
        let sentAgo = sentAt.duration(to: clock.now)
        let stored = try await retryingDatabase {
            try await credentials.storeToken(
                sealed: sealed,
                lifetime: grant.expiresIn,
                margin: margin,
                sentAgo: sentAgo,
                refreshToken: refreshToken,
                refreshed: refreshed
            )
        }
        logger.info(
            refreshed ? "token refreshed" : "logged in",
            metadata: ["expires_in": "\(grant.expiresIn)", "generation": "\(stored)", "shared": "fleet"]
        )
        return FetchedToken(grant, generation: Int(stored), elapsed: sentAt.duration(to: clock.now), margin: margin)
    }

    /// Uses the shared token when it is valid, not rejected here, and either not due for renewal or being
    /// renewed by another worker (then looked at again shortly).
    private func adopt(_ snapshot: FleetCredentials.Snapshot) -> FetchedToken? {
        guard let sealed = snapshot.sealedToken, snapshot.generation > rejectedGeneration,
            let expiresIn = snapshot.expiresIn, expiresIn > .seconds(2), let refreshIn = snapshot.refreshIn,
            refreshIn > .zero || snapshot.loginUnderWay,
            let token = seal.open(sealed)  // nil: sealed under another secret; log in with ours
        else { return nil }
        return FetchedToken(
            issued: IssuedToken(token: AccessToken(token), generation: Int(snapshot.generation)),
            expiresIn: expiresIn,
            // While another worker renews it, look again shortly.
            renewIn: refreshIn > .zero ? refreshIn : min(pollInterval * 3, expiresIn - .seconds(2))
        )
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
