import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Foundation
import Logging
import NymbleAPI

/// What the workers of a schema share when they call the same API with the same credentials: one token
/// (``FleetTokenSource`` behind a ``SharedTokenStore``) and one send budget (``PostgresSendBudget``), both in PostgreSQL. On by default;
/// `--solo` runs a process on its own (its own token and throttle).
public struct Fleet: Sendable {
    public let credentials: FleetCredentials
    public let limiter: FleetLimiter
    public let seal: TokenSeal
    /// This process in the login lease: host and pid.
    public let owner: String

    public init(database: Database, baseURL: String, credentials api: APICredentials) {
        let key = TokenSeal.credentialsKey(baseURL: baseURL, identity: api.identity)
        credentials = FleetCredentials(database: database, key: key)
        limiter = FleetLimiter(database: database, key: baseURL)
        seal = TokenSeal(secret: api.secret, credentialsKey: key)
        owner = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"
    }

    /// Creates the shared rows when they do not exist yet.
    public func prepare() async throws {
        try await credentials.prepare()
        try await limiter.prepare()
    }

    /// The fleet's token for this process, logging in (or refreshing) with `authenticator` when this
    /// process has to.
    public func tokens<C: Clock>(
        configuration: TokenStoreConfiguration,
        databaseRetryLimit: Duration,
        staleAfter: Duration,
        loginLease: Duration,
        clock: C,
        logger: Logger,
        authenticator: Authenticator
    ) -> SharedTokenStore<C> where C.Duration == Duration {
        let source = FleetTokenSource(
            credentials: credentials,
            seal: seal,
            owner: owner,
            configuration: configuration,
            databaseRetryLimit: databaseRetryLimit,
            staleAfter: staleAfter,
            loginLease: loginLease,
            clock: clock,
            logger: logger,
            authenticator: authenticator
        )
        return SharedTokenStore(source: source, clock: clock, logger: logger)
    }

    /// The fleet's send budget, for one throttle.
    public func budget() -> PostgresSendBudget {
        PostgresSendBudget(limiter: limiter, owner: "\(owner) \(UUID().uuidString.prefix(8))")
    }
}

/// ``FleetLimiter`` as a throttle's ``SharedSendBudget``. Each statement gets a second at most: a worker
/// whose database is slow or away keeps to its share of the rate rather than wait for it.
public struct PostgresSendBudget: SharedSendBudget {
    public let limiter: FleetLimiter
    /// This worker when it leads the fleet's rate: host, pid and a tag of its own (workers of one process
    /// are told apart).
    public let owner: String
    private let timeout = Duration.seconds(1)

    public init(limiter: FleetLimiter, owner: String) {
        self.limiter = limiter
        self.owner = owner
    }

    public func reserve(count: Int, rate: Double, accepted: Int64) async throws -> SharedReservation {
        try await limiter.reserve(count: count, rate: rate, accepted: accepted, timeout: timeout)
    }

    public func pause(for duration: Duration) async throws -> Int64 {
        try await limiter.pause(for: duration, timeout: timeout)
    }

    public func listenForPauses(_ onPause: @escaping @Sendable (SharedPause) -> Void) async throws {
        try await limiter.listenForPauses(onPause)
    }

    public func pause(accepted: Int64) async throws -> SharedPause {
        try await limiter.pause(accepted: accepted, timeout: timeout)
    }

    public func lead(rate: Double?, ceiling: Double?) async throws -> SharedLead? {
        try await limiter.lead(owner: owner, rate: rate, ceiling: ceiling, timeout: timeout)
    }
}
