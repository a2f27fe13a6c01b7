import EnrichToken
import Foundation
import Logging
import NIOHTTP1
import NymbleAPI
import Synchronization
import Testing

/// The dialects as pure functions: the requests they write, the grants and typed errors they read. (The
/// same over real HTTP against the simulator: `DialectTests` in the integration tests.)
@Suite("Auth dialects: requests, grants, error bodies")
struct AuthDialectTests {
    static let date = Date(timeIntervalSince1970: 1_800_000_000)

    static func answer(_ status: Int, _ body: String, date: Date? = Self.date, retryAfter: String? = nil) -> AuthAnswer
    {
        var headers = HTTPHeaders()
        if let date { headers.add(name: "Date", value: RetryAfter.format(date)) }
        if let retryAfter { headers.add(name: "Retry-After", value: retryAfter) }
        return AuthAnswer(
            status: status,
            headers: headers,
            body: Array(body.utf8),
            receivedAt: Self.date.addingTimeInterval(30)
        )
    }

    static func iso(_ date: Date) -> String { date.formatted(.iso8601) }

    static func jwt(exp: Double?) -> String {
        func part(_ text: String) -> String {
            Data(text.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        }
        let claims = exp.map { #"{"sub":"u_1","exp":\#(Int($0)),"iat":1}"# } ?? #"{"sub":"u_1"}"#
        return part(#"{"alg":"HS256","typ":"access"}"#) + "." + part(claims) + ".c2lnbmF0dXJl"
    }

    @Test("requests: each dialect's login body and path, B2B's refresh, AchieveApex's logout with the bearer")
    func requests() {
        let nymble = NymbleDialect().loginRequest(.nymble(.init(orgCode: "o", clientId: "c", clientSecret: "s\"x")))
        #expect(nymble.path == "/api/auth/login" && nymble.method == .post)
        #expect(nymble.body == #"{"OrgCode":"o","ClientId":"c","ClientSecret":"s\"x"}"#)
        let b2b = B2BDialect()
        #expect(b2b.loginRequest(.b2b(username: "u", password: "p")).body == #"{"username":"u","password":"p"}"#)
        #expect(b2b.loginRequest(.b2b(username: "u", password: "p")).path == "/auth/login")
        let refresh = B2BDialect(refreshPath: "/v1/token/refresh").refreshRequest(AccessToken("rt-1"))
        #expect(refresh?.path == "/v1/token/refresh" && refresh?.body == #"{"refresh_token":"rt-1"}"#)
        #expect(b2b.logoutRequest(AccessToken("t")) == nil && NymbleDialect().refreshRequest(AccessToken("t")) == nil)
        let apex = AchieveApexDialect()
        #expect(
            apex.loginRequest(.achieveApex(email: "e@x", password: "p")).body
                == #"{"strategy":"local","email":"e@x","password":"p"}"#
        )
        let logout = apex.logoutRequest(AccessToken("jwt"))
        #expect(logout?.method == .delete && logout?.path == "/authentication" && logout?.bearer == AccessToken("jwt"))
        #expect(apex.refreshRequest(AccessToken("t")) == nil, "jwt re-auth does not extend exp: renewal is a login")
        #expect(b2b.renewsWithRefreshToken && !apex.renewsWithRefreshToken && !NymbleDialect().renewsWithRefreshToken)
        #expect(b2b.endsSessionAtShutdown && apex.endsSessionAtShutdown && !NymbleDialect().endsSessionAtShutdown)
    }

    @Test("B2B: lifetimes are the absolute expiries less the answer's Date (less 2 s: truncated, maybe cached)")
    func b2bGrant() throws {
        let body = """
            {"access_token":"at-1","refresh_token":"rt-1","access_expires_at":"\(Self.iso(Self.date.addingTimeInterval(900)))",
             "refresh_expires_at":"\(Self.iso(Self.date.addingTimeInterval(86_400)))","client_id":4711}
            """
        let grant = try B2BDialect().grant(Self.answer(200, body), endpoint: "login")
        #expect(grant.token == AccessToken("at-1") && grant.refreshToken == AccessToken("rt-1"))
        #expect(grant.expiresIn == .seconds(898) && grant.refreshExpiresIn == .seconds(86_398))
        // Without a Date header, this host's clock at arrival (30 s after the Date above).
        let local = try B2BDialect().grant(Self.answer(200, body, date: nil), endpoint: "login")
        #expect(local.expiresIn == .seconds(870))
        #expect(throws: NymbleAPIError.self) {
            try B2BDialect().grant(Self.answer(200, #"{"access_token":"at-1"}"#), endpoint: "login")
        }
        let expired = body.replacingOccurrences(
            of: Self.iso(Self.date.addingTimeInterval(900)),
            with: Self.iso(Self.date)
        )
        do {
            _ = try B2BDialect().grant(Self.answer(200, expired), endpoint: "refresh")
            Issue.record("an already expired access token was accepted")
        } catch {
            #expect(error.code == .undecodable && error.endpoint == "refresh")
        }
    }

    @Test("AchieveApex: 201 and 200 succeed; the lifetime is the JWT's exp less the Date; no exp is undecodable")
    func apexGrant() throws {
        let apex = AchieveApexDialect()
        #expect(apex.isSuccess(201) && apex.isSuccess(200) && !apex.isSuccess(204))
        let token = Self.jwt(exp: Self.date.timeIntervalSince1970 + 3_600)
        let body = #"{"accessToken":"\#(token)","authentication":{"strategy":"local"},"user":{"id":"u_1"}}"#
        let grant = try apex.grant(Self.answer(201, body), endpoint: "login")
        #expect(grant.expiresIn == .seconds(3_598) && grant.refreshToken == nil && grant.token.bearerValue == token)
        #expect(AchieveApexDialect.expiry(of: token) == Self.date.addingTimeInterval(3_600))
        for bad in [Self.jwt(exp: nil), "not-a-jwt", "a.b.c"] {
            let body = #"{"accessToken":"\#(bad)"}"#
            #expect(throws: NymbleAPIError.self) { try apex.grant(Self.answer(201, body), endpoint: "login") }
        }
    }

    @Test(
        "every documented error body is parsed into a typed error",
        arguments: [
            (
                APIDialect.b2b, 400, "login",
                #"{"error":"validation_error","message":"username and password are required"}"#,
                NymbleAPIError.Code.badRequest, "validation_error", "username and password are required"
            ),
            (
                .b2b, 401, "login", #"{"error":"unauthorized","message":"invalid credentials"}"#, .invalidCredentials,
                "unauthorized", "invalid credentials"
            ),
            (
                .b2b, 429, "login", #"{"error":"too_many_requests","message":"too many login attempts"}"#, .rateLimited,
                "too_many_requests", "too many login attempts"
            ),
            (
                .b2b, 401, "refresh", #"{"error":"unauthorized","message":"invalid refresh token"}"#, .unauthorized,
                "unauthorized", "invalid refresh token"
            ),
            (
                .b2b, 401, "access", #"{"error":"unauthorized","message":"token expired"}"#, .unauthorized,
                "unauthorized", "token expired"
            ),
            (
                .achieveApex, 401, "login",
                #"{"name":"NotAuthenticated","message":"Invalid login","code":401,"className":"not-authenticated","errors":{}}"#,
                .invalidCredentials, "NotAuthenticated", "Invalid login"
            ),
            (
                .achieveApex, 401, "access",
                #"{"name":"NotAuthenticated","message":"jwt expired","code":401,"className":"not-authenticated","errors":{}}"#,
                .unauthorized, "NotAuthenticated", "jwt expired"
            ),
            (
                .achieveApex, 400, "access",
                #"{"name":"BadRequest","message":"userId is required","code":400,"className":"bad-request","errors":{}}"#,
                .badRequest, "BadRequest", "userId is required"
            ),
            (
                .achieveApex, 403, "access",
                #"{"name":"Forbidden","message":"not permitted","code":403,"className":"forbidden","errors":{}}"#,
                .forbidden, "Forbidden", "not permitted"
            ),
            (
                .achieveApex, 404, "access",
                #"{"name":"NotFound","message":"Page not found","code":404,"className":"not-found","errors":{}}"#,
                .unexpectedStatus, "NotFound", "Page not found"
            ),
        ]
    )
    func errorBodies(
        dialect: APIDialect,
        status: Int,
        endpoint: String,
        body: String,
        code: NymbleAPIError.Code,
        name: String,
        message: String
    ) {
        let error = dialect.auth().error(
            status: status,
            retryAfter: status == 429 ? "7" : nil,
            body: Array(body.utf8),
            endpoint: endpoint,
            scrubbing: []
        )
        #expect(error.code == code && error.status == status && error.endpoint == endpoint)
        #expect(error.body?.name == name && error.body?.message == message)
        if dialect == .achieveApex { #expect(error.body?.code == status && error.body?.className != nil) }
        if status == 429 { #expect(error.retryAfter == .seconds(7)) }
        #expect(error.description.contains(message), "\(error)")
    }

    @Test("undocumented bodies are not read; a token or password echoed in a message is removed")
    func scrubbing() {
        let b2b = B2BDialect()
        #expect(b2b.errorBody(Array("<html>oops</html>".utf8), scrubbing: []) == nil)
        #expect(NymbleDialect().errorBody(Array(#"{"error":"x","message":"y"}"#.utf8), scrubbing: []) == nil)
        let echoed = #"{"error":"unauthorized","message":"token secret-token-123 is revoked for hunter%2Fx\r\nFAKE"}"#
        let error = b2b.error(
            status: 401,
            retryAfter: nil,
            body: Array(echoed.utf8),
            endpoint: "access",
            scrubbing: ["secret-token-123", "hunter/x"]
        )
        #expect(!error.description.contains("secret-token-123") && !error.description.contains("hunter"))
        #expect(!error.description.contains("\n") && !error.description.contains("\r"), "no forged log lines")
        #expect(error.description.contains("<redacted>"))
        // A secret ending in a backslash, echoed JSON-escaped: the longer form goes whole, no "\" is left.
        let escaped = b2b.error(
            status: 400,
            retryAfter: nil,
            body: Array(#"{"error":"bad","message":"got pw\\\\ back"}"#.utf8),
            endpoint: "login",
            scrubbing: ["pw\\"]
        )
        #expect(escaped.body?.message == "got <redacted> back", "\(escaped)")
        let credentials: [APICredentials] = [
            .b2b(username: "svc", password: "hunter2"), .achieveApex(email: "e@x", password: "hunter2"),
            .nymble(.init(orgCode: "o", clientId: "c", clientSecret: "hunter2")),
        ]
        for credentials in credentials {
            #expect(!"\(credentials)".contains("hunter2") && !String(reflecting: credentials).contains("hunter2"))
            #expect(credentials.secret == "hunter2" && !credentials.identity.contains("hunter2"))
        }
    }
}

/// Stands in for a B2B login and refresh in pure-logic tests: every grant carries a new refresh token;
/// a refresh token is good once (it rotates), and the script can refuse them.
final class ScriptedB2B: Sendable {
    struct State {
        var logins = 0
        var refreshes = 0
        var reused = 0
        var refuseRefresh = false
        var valid: Set<String> = []
        var counter = 0
        var sent: [String] = []
    }
    let state = Mutex(State())
    let lifetime: Duration
    let refreshLifetime: Duration

    init(lifetime: Duration, refreshLifetime: Duration) {
        self.lifetime = lifetime
        self.refreshLifetime = refreshLifetime
    }

    private func grant(_ state: inout State) -> LoginGrant {
        state.counter += 1
        let refresh = "rt-\(state.counter)"
        state.valid.insert(refresh)
        return LoginGrant(
            token: AccessToken("at-\(state.counter)"),
            tokenType: "Bearer",
            expiresIn: lifetime,
            refreshToken: AccessToken(refresh),
            refreshExpiresIn: refreshLifetime
        )
    }

    var authenticator: Authenticator {
        Authenticator(
            login: {
                self.state.withLock { state in
                    state.logins += 1
                    return self.grant(&state)
                }
            },
            refresh: { token in
                try self.state.withLock { state in
                    state.sent.append(token.bearerValue)
                    guard !state.refuseRefresh, state.valid.remove(token.bearerValue) != nil else {
                        if state.sent.dropLast().contains(token.bearerValue) { state.reused += 1 }
                        throw NymbleAPIError(
                            .unauthorized,
                            api: "B2B",
                            endpoint: "refresh",
                            status: 401,
                            detail: "refused"
                        )
                    }
                    state.refreshes += 1
                    return self.grant(&state)
                }
            }
        )
    }
}

@Suite("Token renewal with a refresh token (manual clock)", .timeLimit(.minutes(1)))
struct RefreshTokenRenewalTests {
    static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("renewals use the refresh token while it is valid; each refresh token is sent once")
    func refreshInsteadOfLogin() async throws {
        let clock = ManualClock()
        let api = ScriptedB2B(lifetime: .seconds(100), refreshLifetime: .seconds(1_000))
        let store = SharedTokenStore(clock: clock, logger: Self.logger, authenticator: api.authenticator)
        #expect(try await store.currentToken().token == AccessToken("at-1"))
        for renewal in 2...6 {
            clock.advance(by: .seconds(95))  // past the refresh-ahead point (10 s before expiry)
            #expect(try await store.currentToken().token == AccessToken("at-\(renewal)"))
        }
        let state = api.state.withLock { $0 }
        #expect(state.logins == 1 && state.refreshes == 5 && state.reused == 0)
        #expect(Set(state.sent).count == state.sent.count, "a rotating refresh token was sent twice: \(state.sent)")
        #expect(await store.loginCount() == 1)
    }

    @Test("a refused refresh token falls back to a login; an expiring one is not used; a 401 renews by refresh")
    func fallbackToLogin() async throws {
        let clock = ManualClock()
        let api = ScriptedB2B(lifetime: .seconds(100), refreshLifetime: .seconds(150))
        let store = SharedTokenStore(clock: clock, logger: Self.logger, authenticator: api.authenticator)
        let first = try await store.currentToken()
        // A 401 for the current token: renewed with the refresh token, not a login.
        await store.tokenRejected(first)
        #expect(try await store.currentToken().token == AccessToken("at-2"))
        #expect(api.state.withLock { ($0.logins, $0.refreshes) } == (1, 1))
        // The API refuses refresh tokens (revoked): one refused refresh, then a login.
        api.state.withLock { $0.refuseRefresh = true }
        clock.advance(by: .seconds(95))
        #expect(try await store.currentToken().token == AccessToken("at-3"))
        #expect(api.state.withLock { ($0.logins, $0.refreshes, $0.sent.count) } == (2, 1, 2))
        // The refresh token of the last login has 150 s; 148 s later it has under 5 s left: a login.
        api.state.withLock { $0.refuseRefresh = false }
        clock.advance(by: .seconds(95))
        #expect(try await store.currentToken().token == AccessToken("at-4"), "refreshed with 55 s left")
        clock.advance(by: .seconds(148))
        _ = try await store.currentToken()
        #expect(api.state.withLock { ($0.logins, $0.refreshes, $0.reused) } == (3, 2, 0))
    }

    @Test("the logout at the end of the session is sent once, with the last token, and only where the dialect has one")
    func endSession() async throws {
        let clock = ManualClock()
        let loggedOut = Mutex<[String]>([])
        let authenticator = Authenticator(
            login: { LoginGrant(token: AccessToken("jwt-1"), tokenType: "Bearer", expiresIn: .seconds(60)) },
            logout: { token in loggedOut.withLock { $0.append(token.bearerValue) } }
        )
        let store = SharedTokenStore(clock: clock, logger: Self.logger, authenticator: authenticator)
        await store.endSession(deadline: .seconds(1))
        #expect(loggedOut.withLock { $0 }.isEmpty, "no token, nothing to log out")
        _ = try await store.currentToken()
        await store.endSession(deadline: .seconds(1))
        await store.endSession(deadline: .seconds(1))
        #expect(loggedOut.withLock { $0 } == ["jwt-1"])
    }
}
