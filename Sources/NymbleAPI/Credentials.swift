/// The API credentials from the vendor dashboard (Settings → API Access).
///
/// `description` and `debugDescription` never show the secret, so a credentials value can be logged or
/// interpolated into an error without leaking it.
public struct NymbleCredentials: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public var orgCode: String
    public var clientId: String
    /// A password: never logged, never written to the database, never echoed in an error.
    public var clientSecret: String

    public init(orgCode: String, clientId: String, clientSecret: String) {
        self.orgCode = orgCode
        self.clientId = clientId
        self.clientSecret = clientSecret
    }

    public var description: String {
        "NymbleCredentials(orgCode: \(orgCode), clientId: \(clientId), clientSecret: <redacted>)"
    }
    public var debugDescription: String { description }
}

/// A bearer token from `POST /api/auth/login`. Its text is only reachable through ``bearerValue`` (to build
/// the `Authorization` header); printing the value shows a redacted placeholder.
public struct AccessToken: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    private let value: String

    public init(_ value: String) { self.value = value }

    /// The raw token, for the `Authorization: Bearer` header only.
    public var bearerValue: String { value }

    public var description: String { "AccessToken(<redacted>)" }
    public var debugDescription: String { description }
}

/// A successful login: the token and its lifetime.
public struct LoginGrant: Sendable, Hashable {
    public var token: AccessToken
    /// `TokenType` as sent; always "api-key" per the contract, and the Bearer scheme is used regardless.
    public var tokenType: String
    /// `ExpiresIn`: lifetime in seconds (86,400 by default).
    public var expiresIn: Duration

    public init(token: AccessToken, tokenType: String, expiresIn: Duration) {
        self.token = token
        self.tokenType = tokenType
        self.expiresIn = expiresIn
    }
}
