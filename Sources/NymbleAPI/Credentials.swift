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

/// A successful login (or refresh): the token, its lifetime, and what renews it.
public struct LoginGrant: Sendable, Hashable {
    public var token: AccessToken
    /// `TokenType` as sent (Nymble: always "api-key"); the Bearer scheme is used regardless.
    public var tokenType: String
    /// Time left before the token expires, as of the answer: Nymble's `ExpiresIn`, B2B's `access_expires_at`
    /// less the answer's `Date`, AchieveApex's JWT `exp` less the answer's `Date`.
    public var expiresIn: Duration
    /// B2B: the refresh token that renews this one (it rotates: each is good for one refresh).
    public var refreshToken: AccessToken?
    /// Time left before ``refreshToken`` expires (`refresh_expires_at` less the answer's `Date`).
    public var refreshExpiresIn: Duration?

    public init(
        token: AccessToken,
        tokenType: String,
        expiresIn: Duration,
        refreshToken: AccessToken? = nil,
        refreshExpiresIn: Duration? = nil
    ) {
        self.token = token
        self.tokenType = tokenType
        self.expiresIn = expiresIn
        self.refreshToken = refreshToken
        self.refreshExpiresIn = refreshExpiresIn
    }
}

/// Who logs in, in the words of the API's dialect. `description` never shows a secret.
public enum APICredentials: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    /// Nymble: OrgCode, ClientId, ClientSecret.
    case nymble(NymbleCredentials)
    /// B2B: username and password.
    case b2b(username: String, password: String)
    /// AchieveApex: the `local` strategy's email and password.
    case achieveApex(email: String, password: String)

    public var dialect: APIDialect {
        switch self {
        case .nymble: .nymble
        case .b2b: .b2b
        case .achieveApex: .achieveApex
        }
    }

    /// Who logs in, without the secret: what names the fleet's credentials row. Nymble's is its OrgCode and
    /// ClientId as before profiles existed, so that a fleet keeps its row across the upgrade.
    public var identity: String {
        switch self {
        case .nymble(let credentials): "\(credentials.orgCode)\n\(credentials.clientId)"
        case .b2b(let username, _): "b2b\n\(username)"
        case .achieveApex(let email, _): "achieveapex\n\(email)"
        }
    }

    /// The secret (ClientSecret or password): what seals the fleet's shared tokens. Never logged.
    public var secret: String {
        switch self {
        case .nymble(let credentials): credentials.clientSecret
        case .b2b(_, let password), .achieveApex(_, let password): password
        }
    }

    public var description: String {
        switch self {
        case .nymble(let credentials): credentials.description
        case .b2b(let username, _): "B2B credentials(username: \(username), password: <redacted>)"
        case .achieveApex(let email, _): "AchieveApex credentials(email: \(email), password: <redacted>)"
        }
    }
    public var debugDescription: String { description }
}
