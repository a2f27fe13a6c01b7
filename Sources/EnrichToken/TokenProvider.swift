import NymbleAPI

/// A token handed to a caller, tagged with the login that produced it so that a 401 can be matched to it.
public struct IssuedToken: Sendable, Hashable {
    public let token: AccessToken
    /// Increases with every login; a rejection of an older generation is ignored.
    public let generation: Int

    public init(token: AccessToken, generation: Int) {
        self.token = token
        self.generation = generation
    }
}

/// Where workers get the bearer token from: ``SharedTokenStore``, with a login of its own
/// (``LoginTokenSource``) or the token the workers of a fleet share through PostgreSQL.
public protocol TokenProvider: Sendable {
    /// A token that is valid now. Logs in when there is none (one login at a time, whoever asks).
    func currentToken() async throws -> IssuedToken
    /// Reports that the API answered 401 to `token`. Only the current token is invalidated, so any number
    /// of callers reporting the same token cause a single re-login.
    func tokenRejected(_ token: IssuedToken) async
    /// Logins performed so far (for the job runs table and metrics).
    func loginCount() async -> Int
    /// Ends the API session at shutdown where the dialect wants it (see ``TokenSource/endSession(deadline:)``).
    func endSession(deadline: Duration) async
}

extension TokenProvider {
    public func endSession(deadline: Duration) async {}
}

/// The tuning of ``SharedTokenStore``.
public struct TokenStoreConfiguration: Sendable {
    /// Renew this long before `ExpiresIn` runs out. nil: the smaller of 5 minutes and 10% of the lifetime.
    public var refreshMargin: Duration?
    /// Logins allowed per ``loginWindow`` (the vendor's limit is 10 per minute per ClientId).
    public var loginsPerWindow: Int
    /// The sliding window of the login limit.
    public var loginWindow: Duration
    /// Login attempts on transient errors (5xx, timeouts) before giving up.
    public var maximumLoginAttempts: Int
    /// Login attempts when no connection can be opened (refused, unknown host), a quarter second apart and
    /// growing, before giving up.
    public var maximumUnreachableLoginAttempts: Int
    /// Longest wait honoured from a login 429's Retry-After.
    public var maximumRetryAfter: Duration

    public init(
        refreshMargin: Duration? = nil,
        loginsPerWindow: Int = 10,
        loginWindow: Duration = .seconds(60),
        maximumLoginAttempts: Int = 6,
        maximumUnreachableLoginAttempts: Int = 3,
        maximumRetryAfter: Duration = .seconds(300)
    ) {
        self.maximumUnreachableLoginAttempts = maximumUnreachableLoginAttempts
        self.refreshMargin = refreshMargin
        self.loginsPerWindow = loginsPerWindow
        self.loginWindow = loginWindow
        self.maximumLoginAttempts = maximumLoginAttempts
        self.maximumRetryAfter = maximumRetryAfter
    }

    /// A refresh token with less time left is not used: the refresh could arrive after it expired.
    public static let minimumRefreshTokenLife = Duration.seconds(5)

    /// The margin used for a token of this lifetime.
    public func margin(forLifetime lifetime: Duration) -> Duration {
        if let refreshMargin { return min(refreshMargin, lifetime / 2) }
        return min(.seconds(300), lifetime / 10)
    }
}
