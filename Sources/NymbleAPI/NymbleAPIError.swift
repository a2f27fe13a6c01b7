/// A failed call to the API, typed so that a caller can act on it.
///
/// Never carries a secret or a token: Nymble's error bodies are not echoed for logins, and for `/access`
/// only a short, token-scrubbed excerpt is kept; the B2B and AchieveApex bodies are parsed into ``body``,
/// with any token or secret removed from their message.
public struct NymbleAPIError: Error, CustomStringConvertible, Sendable {
    /// What went wrong. Compare with the static members.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidCredentials, unauthorized, badRequest, forbidden, rateLimited, serverError, transport,
                unreachable, undecodable, unexpectedStatus
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// 401 on login: wrong ClientId/ClientSecret, or OrgCode not matching them. Fatal for a run.
        public static let invalidCredentials = Code(.invalidCredentials)
        /// 401 on `/access`: the bearer token is missing, expired or revoked. Re-login and retry.
        public static let unauthorized = Code(.unauthorized)
        /// 400: OrganizationId or UserId missing or malformed. Permanent for that pair.
        public static let badRequest = Code(.badRequest)
        /// 403 (AchieveApex): authenticated but not permitted. Retried later like a 5xx: it is usually about
        /// the account (a missing role), not the pair, and must not fail a whole queue at once.
        public static let forbidden = Code(.forbidden)
        /// 429: over the limit. ``NymbleAPIError/retryAfter`` holds the parsed `Retry-After`, if any.
        public static let rateLimited = Code(.rateLimited)
        /// 5xx: transient on the server side.
        public static let serverError = Code(.serverError)
        /// Connect or read timeout, connection reset: transient.
        public static let transport = Code(.transport)
        /// No connection could be opened at all (refused, unknown host, unreachable network): the request
        /// never left. Transient, but a login that meets it gives up after a few quick tries.
        public static let unreachable = Code(.unreachable)
        /// A 200 whose body is not the documented JSON.
        public static let undecodable = Code(.undecodable)
        /// Any other status code.
        public static let unexpectedStatus = Code(.unexpectedStatus)

        public var description: String { base.rawValue }
    }

    public let code: Code
    /// Which API: "Nymble", "B2B" or "AchieveApex".
    public let api: String
    /// `login`, `refresh`, `logout` or `access` (the enrichment call).
    public let endpoint: String
    /// The HTTP status, when an answer arrived.
    public let status: Int?
    /// For 429: how long the server asked us to wait; nil when it did not say (or said something unparsable).
    public let retryAfter: Duration?
    /// Secret-free detail for humans.
    public let detail: String
    /// The documented error body, when the dialect has one and the answer carried it.
    public let body: APIErrorBody?

    public init(
        _ code: Code,
        api: String = "Nymble",
        endpoint: String,
        status: Int? = nil,
        retryAfter: Duration? = nil,
        detail: String,
        body: APIErrorBody? = nil
    ) {
        self.code = code
        self.api = api
        self.endpoint = endpoint
        self.status = status
        self.retryAfter = retryAfter
        self.detail = detail
        self.body = body
    }

    /// Worth retrying the same request later (5xx, timeouts, dropped connections).
    public var isTransient: Bool { code == .serverError || code == .transport || code == .unreachable }

    public var description: String {
        var text = "\(api) \(endpoint)"
        if let status { text += " HTTP \(status)" }
        text += " (\(code)): \(detail)"
        if let body { text += " [\(body)]" }
        return text
    }
}

/// A documented error body: B2B's `{"error": ..., "message": ...}` or AchieveApex's (Feathers)
/// `{"name": ..., "message": ..., "code": ..., "className": ...}`.
public struct APIErrorBody: Sendable, Hashable, CustomStringConvertible {
    /// B2B's `error` (`validation_error`, `unauthorized`, ...) or AchieveApex's `name` (`NotAuthenticated`).
    public var name: String
    /// The server's words, at most 200 characters, with any token or secret of ours removed.
    public var message: String?
    /// AchieveApex: `code` (the status again) and `className` (`not-authenticated`).
    public var code: Int?
    public var className: String?

    public init(name: String, message: String?, code: Int? = nil, className: String? = nil) {
        self.name = name
        self.message = message
        self.code = code
        self.className = className
    }

    public var description: String { message.map { "\(name): \($0)" } ?? name }
}
