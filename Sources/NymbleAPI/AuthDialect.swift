import Foundation
import NIOHTTP1

/// A request of an API's login conversation (login, refresh, logout), as its dialect writes it.
public struct AuthRequest: Sendable, Hashable {
    public enum Method: String, Sendable, Hashable {
        case post = "POST"
        case delete = "DELETE"
    }
    public var method: Method
    /// Appended to the base URL.
    public var path: String
    /// A JSON body; nil: none.
    public var body: String?
    /// Sent as the authorisation header (AchieveApex's logout).
    public var bearer: AccessToken?
}

/// An answer of an API's login conversation.
public struct AuthAnswer: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// When it arrived, on this host's clock (the fallback when the answer has no `Date`).
    public var receivedAt: Date

    public init(status: Int, headers: HTTPHeaders, body: [UInt8], receivedAt: Date = .now) {
        self.status = status
        self.headers = headers
        self.body = body
        self.receivedAt = receivedAt
    }
}

/// What differs between the APIs' logins, as pure functions of requests and answers: how to log in, how
/// to renew (a refresh token, or a new login), where the lifetime comes from, how calls are authorised,
/// how errors read and how to log out. The HTTP exchange itself (``NymbleClient``) and everything about
/// sharing the token (single flight, refresh ahead, the 401 generation guard, login pacing, the fleet's
/// row) are the same for every dialect.
public protocol AuthDialect: Sendable {
    var dialect: APIDialect { get }
    /// The API's name in messages ("Nymble", "B2B", "AchieveApex").
    var apiName: String { get }
    /// The header that authorises a call, and its scheme: `Authorization: Bearer <token>` for all three.
    var authorization: (header: String, scheme: String) { get }
    /// Whether renewal uses a refresh token (``refreshRequest(_:)``) rather than a new login.
    var renewsWithRefreshToken: Bool { get }
    /// Whether the last worker to stop clears the tokens (and logs out where the API offers it). Nymble's
    /// token stays cached for the next run instead: its lifetime is a day and its login limit tight.
    var endsSessionAtShutdown: Bool { get }

    func loginRequest(_ credentials: APICredentials) -> AuthRequest
    /// The renewal with `refreshToken`; nil when renewal is a new login.
    func refreshRequest(_ refreshToken: AccessToken) -> AuthRequest?
    /// The logout of `token`; nil when the API offers none.
    func logoutRequest(_ token: AccessToken) -> AuthRequest?
    /// Whether `status` is a successful login or refresh.
    func isSuccess(_ status: Int) -> Bool
    /// A successful login or refresh answer as a grant.
    func grant(_ answer: AuthAnswer, endpoint: String) throws(NymbleAPIError) -> LoginGrant
    /// The documented error body of a failed answer, if it has one (secrets of `scrubbing` removed).
    func errorBody(_ body: [UInt8], scrubbing: [String]) -> APIErrorBody?
    /// The typed error of a failed answer on `endpoint` (a default reads the status and ``errorBody(_:scrubbing:)``).
    func error(status: Int, retryAfter: String?, body: [UInt8], endpoint: String, scrubbing: [String]) -> NymbleAPIError
}

extension AuthDialect {
    public var authorization: (header: String, scheme: String) { ("Authorization", "Bearer") }
    public var renewsWithRefreshToken: Bool { false }
    public func isSuccess(_ status: Int) -> Bool { status == 200 }

    /// The typed error of a failed answer on `endpoint`: a 401 on a login is refused credentials (fatal), on
    /// anything else a rejected token; 400 bad request; 403 forbidden; 429 with its Retry-After; 5xx transient.
    public func error(
        status: Int,
        retryAfter: String?,
        body bytes: [UInt8],
        endpoint: String,
        scrubbing secrets: [String]
    ) -> NymbleAPIError {
        let body = errorBody(bytes, scrubbing: secrets)
        func make(_ code: NymbleAPIError.Code, _ detail: String, retryAfter: Duration? = nil) -> NymbleAPIError {
            NymbleAPIError(
                code,
                api: apiName,
                endpoint: endpoint,
                status: status,
                retryAfter: retryAfter,
                detail: detail,
                body: body
            )
        }
        switch status {
        case 401 where endpoint == "login":
            return make(.invalidCredentials, "the credentials were refused")
        case 401 where endpoint == "refresh":
            return make(.unauthorized, "the refresh token was refused")
        case 401:
            return make(.unauthorized, "bearer token missing, expired or invalid")
        case 400:
            return make(.badRequest, endpoint == "access" ? "the request was refused as malformed" : "bad request")
        case 403:
            return make(.forbidden, "authenticated but not permitted")
        case 429:
            let wait = RetryAfter.parse(retryAfter)
            return make(
                .rateLimited,
                wait.map { "rate limited; Retry-After \($0)" } ?? "rate limited; no usable Retry-After",
                retryAfter: wait
            )
        case 500...599:
            return make(.serverError, "server error")
        default:
            return make(.unexpectedStatus, "unexpected status")
        }
    }

    func undecodable(_ answer: AuthAnswer, endpoint: String, _ detail: String) -> NymbleAPIError {
        NymbleAPIError(.undecodable, api: apiName, endpoint: endpoint, status: answer.status, detail: detail)
    }
}

extension APIDialect {
    /// The dialect's login conversation; `refreshPath` is B2B's refresh endpoint (the contract names none).
    public func auth(refreshPath: String = B2BDialect.defaultRefreshPath) -> any AuthDialect {
        switch self {
        case .nymble: NymbleDialect()
        case .b2b: B2BDialect(refreshPath: refreshPath)
        case .achieveApex: AchieveApexDialect()
        }
    }
}

/// Nymble (contract section 1): `POST /api/auth/login` → `{AccessToken, TokenType, ExpiresIn}`; renewal is a
/// new login; no logout; error bodies are not documented, so none is read.
public struct NymbleDialect: AuthDialect {
    public var dialect: APIDialect { .nymble }
    public var apiName: String { "Nymble" }
    public var endsSessionAtShutdown: Bool { false }

    public init() {}

    public func loginRequest(_ credentials: APICredentials) -> AuthRequest {
        guard case .nymble(let nymble) = credentials else { preconditionFailure("Nymble credentials expected") }
        let body =
            "{\"OrgCode\":\(JSONText.quoted(nymble.orgCode)),\"ClientId\":\(JSONText.quoted(nymble.clientId)),"
            + "\"ClientSecret\":\(JSONText.quoted(nymble.clientSecret))}"
        return AuthRequest(method: .post, path: "/api/auth/login", body: body)
    }

    public func refreshRequest(_ refreshToken: AccessToken) -> AuthRequest? { nil }
    public func logoutRequest(_ token: AccessToken) -> AuthRequest? { nil }
    public func errorBody(_ body: [UInt8], scrubbing: [String]) -> APIErrorBody? { nil }

    /// No body is assumed on an error: a login's is not read, and of the enrichment call's a short excerpt
    /// is kept (token removed). A 401 on a login is read in `NymbleClient.login`, which knows the OrgCode.
    public func error(
        status: Int,
        retryAfter: String?,
        body: [UInt8],
        endpoint: String,
        scrubbing secrets: [String]
    ) -> NymbleAPIError {
        guard endpoint == "access" else {
            return Self.error(endpoint: endpoint, status: status, retryAfter: retryAfter, excerpt: nil)
        }
        if status == 401 {
            return NymbleAPIError(
                .unauthorized,
                endpoint: endpoint,
                status: status,
                detail: "bearer token missing, expired or invalid"
            )
        }
        let excerpt = Self.excerpt(body, scrubbing: secrets)
        return Self.error(endpoint: endpoint, status: status, retryAfter: retryAfter, excerpt: excerpt)
    }

    static func error(
        endpoint: String,
        status: Int,
        retryAfter header: String?,
        excerpt: String?
    )
        -> NymbleAPIError
    {
        let suffix = excerpt.map { $0.isEmpty ? "" : ": \($0)" } ?? ""
        switch status {
        case 400:
            return NymbleAPIError(
                .badRequest,
                endpoint: endpoint,
                status: status,
                detail: "OrganizationId or UserId missing or malformed" + suffix
            )
        case 429:
            let retryAfter = RetryAfter.parse(header)
            return NymbleAPIError(
                .rateLimited,
                endpoint: endpoint,
                status: status,
                retryAfter: retryAfter,
                detail: retryAfter.map { "rate limited; Retry-After \($0)" } ?? "rate limited; no usable Retry-After"
            )
        case 500...599:
            return NymbleAPIError(.serverError, endpoint: endpoint, status: status, detail: "server error" + suffix)
        default:
            return NymbleAPIError(
                .unexpectedStatus,
                endpoint: endpoint,
                status: status,
                detail: "unexpected status" + suffix
            )
        }
    }

    /// At most 200 characters of an error body, as text, scrubbed like the other dialects' error bodies.
    private static func excerpt(_ bytes: some Collection<UInt8>, scrubbing secrets: [String]) -> String {
        TokenText.scrub(String(decoding: bytes.prefix(400), as: UTF8.self), secrets, limit: 200)
    }

    public func grant(_ answer: AuthAnswer, endpoint: String) throws(NymbleAPIError) -> LoginGrant {
        struct Answer: Decodable {
            let AccessToken: String
            let TokenType: String
            let ExpiresIn: Int64
        }
        guard let decoded = try? JSONDecoder().decode(Answer.self, from: Data(answer.body)),
            let token = TokenText.accepted(decoded.AccessToken), decoded.ExpiresIn > 0
        else {
            throw undecodable(answer, endpoint: endpoint, "the answer is not {AccessToken, TokenType, ExpiresIn > 0}")
        }
        return LoginGrant(token: token, tokenType: decoded.TokenType, expiresIn: .seconds(decoded.ExpiresIn))
    }
}

/// The B2B password-login API (contract section 2): `POST /auth/login` with username and password →
/// `{access_token, refresh_token, access_expires_at, refresh_expires_at, client_id}`; renewal with the
/// refresh token (`POST <refresh path>` with `{"refresh_token": ...}`, which rotates it); lifetimes are the
/// absolute expiries less the answer's `Date`; errors are `{error, message}`; no logout endpoint, so the
/// tokens are cleared at shutdown.
public struct B2BDialect: AuthDialect {
    /// The contract says to refresh with the refresh token but names no endpoint: this is the usual one.
    public static let defaultRefreshPath = "/auth/refresh"
    public let refreshPath: String
    public var dialect: APIDialect { .b2b }
    public var apiName: String { "B2B" }
    public var renewsWithRefreshToken: Bool { true }
    public var endsSessionAtShutdown: Bool { true }

    public init(refreshPath: String = Self.defaultRefreshPath) { self.refreshPath = refreshPath }

    public func loginRequest(_ credentials: APICredentials) -> AuthRequest {
        guard case .b2b(let username, let password) = credentials else {
            preconditionFailure("B2B credentials expected")
        }
        return AuthRequest(
            method: .post,
            path: "/auth/login",
            body: "{\"username\":\(JSONText.quoted(username)),\"password\":\(JSONText.quoted(password))}"
        )
    }

    public func refreshRequest(_ refreshToken: AccessToken) -> AuthRequest? {
        AuthRequest(
            method: .post,
            path: refreshPath,
            body: "{\"refresh_token\":\(JSONText.quoted(refreshToken.bearerValue))}"
        )
    }

    public func logoutRequest(_ token: AccessToken) -> AuthRequest? { nil }

    public func grant(_ answer: AuthAnswer, endpoint: String) throws(NymbleAPIError) -> LoginGrant {
        let fields = JSONFields(answer.body)
        guard let access = fields?.string("access_token").flatMap(TokenText.accepted),
            let refresh = fields?.string("refresh_token").flatMap(TokenText.accepted),
            let accessExpires = fields?.string("access_expires_at").flatMap(TokenText.timestamp),
            let refreshExpires = fields?.string("refresh_expires_at").flatMap(TokenText.timestamp)
        else {
            throw undecodable(
                answer,
                endpoint: endpoint,
                "the answer is not {access_token, refresh_token, access_expires_at, refresh_expires_at}"
            )
        }
        let expiresIn = TokenText.remaining(until: accessExpires, answer: answer)
        guard expiresIn > .zero else {
            throw undecodable(answer, endpoint: endpoint, "access_expires_at is not after the answer's Date")
        }
        return LoginGrant(
            token: access,
            tokenType: "Bearer",
            expiresIn: expiresIn,
            refreshToken: refresh,
            refreshExpiresIn: TokenText.remaining(until: refreshExpires, answer: answer)
        )
    }

    public func errorBody(_ body: [UInt8], scrubbing secrets: [String]) -> APIErrorBody? {
        guard let fields = JSONFields(body), let name = fields.string("error") else { return nil }
        return APIErrorBody(
            name: TokenText.scrub(name, secrets, limit: 80),
            message: fields.string("message").map { TokenText.scrub($0, secrets) }
        )
    }
}

/// AchieveApex (contract section 3): Feathers' `POST /authentication` with the `local` strategy (201 or 200)
/// → `{accessToken, authentication, user}`; the lifetime is the JWT's `exp` (read, never verified: we are
/// not its issuer) less the answer's `Date`; the `jwt` strategy does not extend `exp`, so renewal is a new
/// `local` login; `DELETE /authentication` logs out; errors are `{name, message, code, className}`.
public struct AchieveApexDialect: AuthDialect {
    public var dialect: APIDialect { .achieveApex }
    public var apiName: String { "AchieveApex" }
    public var endsSessionAtShutdown: Bool { true }

    public init() {}

    public func loginRequest(_ credentials: APICredentials) -> AuthRequest {
        guard case .achieveApex(let email, let password) = credentials else {
            preconditionFailure("AchieveApex credentials expected")
        }
        return AuthRequest(
            method: .post,
            path: "/authentication",
            body:
                "{\"strategy\":\"local\",\"email\":\(JSONText.quoted(email)),\"password\":\(JSONText.quoted(password))}"
        )
    }

    public func refreshRequest(_ refreshToken: AccessToken) -> AuthRequest? { nil }

    public func logoutRequest(_ token: AccessToken) -> AuthRequest? {
        AuthRequest(method: .delete, path: "/authentication", body: nil, bearer: token)
    }

    public func isSuccess(_ status: Int) -> Bool { status == 200 || status == 201 }

    public func grant(_ answer: AuthAnswer, endpoint: String) throws(NymbleAPIError) -> LoginGrant {
        guard let token = JSONFields(answer.body)?.string("accessToken").flatMap(TokenText.accepted) else {
            throw undecodable(answer, endpoint: endpoint, "the answer has no accessToken")
        }
        guard let exp = Self.expiry(of: token.bearerValue) else {
            throw undecodable(answer, endpoint: endpoint, "the accessToken is not a JWT with a numeric exp claim")
        }
        let expiresIn = TokenText.remaining(until: exp, answer: answer)
        guard expiresIn > .zero else {
            throw undecodable(answer, endpoint: endpoint, "the JWT's exp is not after the answer's Date")
        }
        return LoginGrant(token: token, tokenType: "Bearer", expiresIn: expiresIn)
    }

    public func errorBody(_ body: [UInt8], scrubbing secrets: [String]) -> APIErrorBody? {
        guard let fields = JSONFields(body), let name = fields.string("name") else { return nil }
        return APIErrorBody(
            name: TokenText.scrub(name, secrets, limit: 80),
            message: fields.string("message").map { TokenText.scrub($0, secrets) },
            code: fields.integer("code"),
            className: fields.string("className").map { TokenText.scrub($0, secrets, limit: 80) }
        )
    }

    /// The `exp` claim of a JWT (header.payload.signature, base64url), decoded without verifying it.
    public static func expiry(of jwt: String) -> Date? {
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var base64 = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let payload = Data(base64Encoded: base64),
            let claims = try? JSONSerialization.jsonObject(with: payload) as? [String: Any],
            let exp = claims["exp"] as? Double
        else { return nil }
        return Date(timeIntervalSince1970: exp)
    }
}

/// The members of a JSON object answer, read leniently (the login answers are small and rare).
struct JSONFields {
    private let object: [String: Any]

    init?(_ bytes: [UInt8]) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else { return nil }
        self.object = object
    }

    func string(_ key: String) -> String? { object[key] as? String }

    func integer(_ key: String) -> Int? { object[key] as? Int }
}

/// Checks and conversions shared by the dialects.
enum TokenText {
    /// A token to send in a header: non-empty, no control characters (they would split the request).
    static func accepted(_ text: String) -> AccessToken? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x7F }) else { return nil }
        return AccessToken(text)
    }

    /// A UTC ISO-8601 timestamp (`2024-01-15T10:30:00Z`, fractional seconds allowed).
    static func timestamp(_ text: String) -> Date? {
        if let date = try? Date(text, strategy: .iso8601) { return date }
        return try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// Time from the answer to `instant`, on the server's clock: `instant` less the answer's `Date`, less two
    /// seconds (`Date` is truncated to the second, and many servers and proxies cache it for a second); this
    /// host's clock when there is no `Date`.
    static func remaining(until instant: Date, answer: AuthAnswer) -> Duration {
        if let header = answer.headers.first(name: "Date"), let date = RetryAfter.httpDate(header) {
            return .seconds(instant.timeIntervalSince(date) - 2)
        }
        return .seconds(instant.timeIntervalSince(answer.receivedAt))
    }

    /// `text` with each of `secrets` (as is, JSON-escaped or percent-encoded) replaced and control
    /// characters turned into spaces (a message cannot forge log lines), at most `limit` characters.
    static func scrub(_ text: String, _ secrets: [String], limit: Int = 200) -> String {
        var text = text
        for secret in secrets where !secret.isEmpty {
            let escaped = String(JSONText.quoted(secret).dropFirst().dropLast())
            let encoded = secret.addingPercentEncoding(withAllowedCharacters: unreserved) ?? secret
            // The longest form first: one may contain another (a secret ending in a backslash).
            let forms = Set([secret, escaped, encoded, encoded.lowercased()]).sorted { $0.count > $1.count }
            for form in forms {
                text = text.replacingOccurrences(of: form, with: "<redacted>")
            }
        }
        let clean = String(
            String.UnicodeScalarView(
                text.unicodeScalars.map { scalar in
                    scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar == "\u{2028}"
                        || scalar == "\u{2029}" ? " " : scalar
                }
            )
        )
        return String(clean.prefix(limit))
    }

    /// RFC 3986's unreserved characters: what percent-encoding leaves as it is.
    static let unreserved = CharacterSet(
        charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )
}
