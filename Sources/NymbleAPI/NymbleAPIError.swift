/// A failed call to the Nymble API, typed so that a caller can act on it.
///
/// Never carries the ClientSecret or a token: error bodies are not echoed for logins, and for `/access`
/// only a short, token-scrubbed excerpt is kept.
public struct NymbleAPIError: Error, CustomStringConvertible, Sendable {
    /// What went wrong. Compare with the static members.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidCredentials, unauthorized, badRequest, rateLimited, serverError, transport, unreachable,
                undecodable, unexpectedStatus
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// 401 on login: wrong ClientId/ClientSecret, or OrgCode not matching them. Fatal for a run.
        public static let invalidCredentials = Code(.invalidCredentials)
        /// 401 on `/access`: the bearer token is missing, expired or revoked. Re-login and retry.
        public static let unauthorized = Code(.unauthorized)
        /// 400: OrganizationId or UserId missing or malformed. Permanent for that pair.
        public static let badRequest = Code(.badRequest)
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
    /// `login` or `access`.
    public let endpoint: String
    /// The HTTP status, when an answer arrived.
    public let status: Int?
    /// For 429: how long the server asked us to wait; nil when it did not say (or said something unparsable).
    public let retryAfter: Duration?
    /// Secret-free detail for humans.
    public let detail: String

    public init(_ code: Code, endpoint: String, status: Int? = nil, retryAfter: Duration? = nil, detail: String) {
        self.code = code
        self.endpoint = endpoint
        self.status = status
        self.retryAfter = retryAfter
        self.detail = detail
    }

    /// Worth retrying the same request later (5xx, timeouts, dropped connections).
    public var isTransient: Bool { code == .serverError || code == .transport || code == .unreachable }

    public var description: String {
        var text = "Nymble \(endpoint)"
        if let status { text += " HTTP \(status)" }
        text += " (\(code)): \(detail)"
        return text
    }
}
