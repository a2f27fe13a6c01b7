import AsyncHTTPClient
import Foundation
import NIOCore
import NymbleAPI
import NymbleSimulator
import Testing

/// One answer of the simulator, as a client sees it over loopback HTTP.
private struct WireAnswer {
    let status: Int
    let body: String
    let date: String?
    let retryAfter: String?

    /// The body as a JSON object.
    func object() throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any], "not an object: \(body)")
    }

    /// A string field of the body.
    func string(_ field: String) throws -> String {
        try #require(try object()[field] as? String, "no string \(field) in \(body)")
    }
}

/// Requests over real HTTP with AsyncHTTPClient.
private enum Wire {
    static func send(
        _ method: String,
        _ url: String,
        json: String? = nil,
        bearer: String? = nil
    ) async throws -> WireAnswer {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        if let bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 1 << 20)
        return WireAnswer(
            status: Int(response.status.code),
            body: String(buffer: body),
            date: response.headers.first(name: "Date"),
            retryAfter: response.headers.first(name: "Retry-After")
        )
    }

    static func post(_ url: String, _ json: String, bearer: String? = nil) async throws -> WireAnswer {
        try await send("POST", url, json: json, bearer: bearer)
    }

    /// A simulator speaking `dialect`, with the given lifetimes and limits (the defaults otherwise).
    static func withSimulator<T: Sendable>(
        _ dialect: APIDialect,
        tokenLifetime: Duration? = nil,
        refreshLifetime: Duration? = nil,
        loginsPerMinute: Int? = nil,
        accessRate: Double? = nil,
        accessBurst: Double? = nil,
        _ body: (NymbleSimulator, String) async throws -> T
    ) async throws -> T {
        var configuration = SimulatorConfiguration()
        configuration.dialect = dialect
        configuration.tokenLifetime = tokenLifetime ?? configuration.tokenLifetime
        configuration.refreshTokenLifetime = refreshLifetime ?? configuration.refreshTokenLifetime
        configuration.loginsPerMinute = loginsPerMinute ?? configuration.loginsPerMinute
        configuration.accessRate = accessRate
        configuration.accessBurst = accessBurst
        return try await NymbleSimulator.withRunning(configuration, logger: quietLogger, body)
    }

    /// Sleeps until just after `instant` (wall clock).
    static func sleep(pastInstant instant: Date) async throws {
        let wait = instant.timeIntervalSinceNow + 0.05
        if wait > 0 { try await Task.sleep(for: .seconds(wait)) }
    }

    /// `2026-12-07T10:30:00Z` and nothing else.
    static func timestamp(_ text: String) throws -> Date {
        #expect(text.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/) != nil, "UTC, second precision: \(text)")
        return try Date.ISO8601FormatStyle().parse(text)
    }

    /// The `Date` header of `answer`, which every answer carries.
    static func date(_ answer: WireAnswer) throws -> Date {
        try #require(answer.date.flatMap(RetryAfter.httpDate), "no Date header")
    }

    /// Users of organization `org_1` with no customer (all null) and with a customer but no price tier.
    static let nullUsers: (allNull: String, noTier: String) = {
        let users = (0..<1000).map { "kp_\($0)" }
        let allNull = users.first {
            CommerceDirectory.context(organizationId: "org_1", userId: $0).customerNumber == nil
        }
        let noTier = users.first {
            let context = CommerceDirectory.context(organizationId: "org_1", userId: $0)
            return context.customerNumber != nil && context.priceTier == nil
        }
        return (allNull!, noTier!)
    }()

    /// The directory's answer for a pair, as JSON values under the given answer field names.
    static func expectDirectoryAnswer(
        _ answer: WireAnswer,
        organization: String,
        user: String,
        fields: (String, String, String)
    ) throws {
        #expect(answer.status == 200, "\(answer.body)")
        let object = try answer.object()
        let expected = CommerceDirectory.context(organizationId: organization, userId: user)
        #expect(Set(object.keys) == [fields.0, fields.1, fields.2])
        for (field, value) in [
            (fields.0, expected.customerNumber), (fields.1, expected.priceTier), (fields.2, expected.currencyCode),
        ] {
            if let value {
                #expect(object[field] as? String == value, "\(field) in \(answer.body)")
            } else {
                #expect(object[field] is NSNull, "\(field) is null in \(answer.body)")
            }
        }
    }
}

/// The B2B and AchieveApex dialects of the simulator, over real loopback HTTP (no database needed).
@Suite("Simulator dialects over loopback", .timeLimit(.minutes(1)))
struct SimulatorDialectTests {}

extension SimulatorDialectTests {
    @Suite("B2B dialect")
    struct B2B {
        static let login = #"{"username":"svc_enrich","password":"b2b-Pa55word!"}"#

        @Test("a login answers 200 with both tokens, whole-second UTC expiries, client_id and an exact Date header")
        func loginGrant() async throws {
            try await Wire.withSimulator(
                .b2b,
                tokenLifetime: .seconds(3600),
                refreshLifetime: .seconds(7200)
            ) { simulator, url in
                let answer = try await Wire.post(url + "/auth/login", Self.login)
                #expect(answer.status == 200, "\(answer.body)")
                let object = try answer.object()
                #expect(
                    Set(object.keys) == [
                        "access_token", "refresh_token", "access_expires_at", "refresh_expires_at", "client_id",
                    ]
                )
                #expect(try answer.string("access_token").hasPrefix("b2b_at_"))
                #expect(try answer.string("refresh_token").hasPrefix("b2b_rt_"))
                #expect(object["client_id"] as? Int == 4711)
                let date = try Wire.date(answer)
                let accessExpiry = try Wire.timestamp(try answer.string("access_expires_at"))
                let refreshExpiry = try Wire.timestamp(try answer.string("refresh_expires_at"))
                // Truncated down at issue, the Date header taken after: the lifetime seen is L or L - 1 s, never more.
                #expect([3599, 3600].contains(accessExpiry.timeIntervalSince(date)), "\(accessExpiry) - \(date)")
                #expect([7199, 7200].contains(refreshExpiry.timeIntervalSince(date)), "\(refreshExpiry) - \(date)")
                // Across a whole second, so that a Date header lagging behind a second boundary would show.
                for _ in 0..<8 {
                    try await Task.sleep(for: .milliseconds(125))
                    let again = try await Wire.post(url + "/auth/login", Self.login)
                    let expiry = try Wire.timestamp(try again.string("access_expires_at"))
                    let lifetime = expiry.timeIntervalSince(try Wire.date(again))
                    #expect([3599, 3600].contains(lifetime), "access_expires_at - Date: \(lifetime)")
                }
                #expect(simulator.stats().logins == 9)
            }
        }

        @Test("login errors: 400 validation_error, 401 unauthorized, 429 too_many_requests with Retry-After")
        func loginErrors() async throws {
            try await Wire.withSimulator(.b2b, loginsPerMinute: 2) { simulator, url in
                let validation = #"{"error":"validation_error","message":"username and password are required"}"#
                for body in [
                    "{}", #"{"username":"svc_enrich"}"#, #"{"username":"","password":"b2b-Pa55word!"}"#,
                    #"{"username":7,"password":"b2b-Pa55word!"}"#, "not json",
                ] {
                    let answer = try await Wire.post(url + "/auth/login", body)
                    #expect(answer.status == 400 && answer.body == validation, "\(body) → \(answer.body)")
                }
                let unauthorized = #"{"error":"unauthorized","message":"invalid credentials"}"#
                let wrongPassword = try await Wire.post(
                    url + "/auth/login",
                    #"{"username":"svc_enrich","password":"nope"}"#
                )
                #expect(wrongPassword.status == 401 && wrongPassword.body == unauthorized)
                let wrongUser = try await Wire.post(
                    url + "/auth/login",
                    #"{"username":"svc_x","password":"b2b-Pa55word!"}"#
                )
                #expect(wrongUser.status == 401 && wrongUser.body == unauthorized)
                // The limit is per username: svc_enrich has used 1 of its 2 logins, svc_x's do not count.
                let allowed = try await Wire.post(url + "/auth/login", Self.login)
                #expect(allowed.status == 200)
                let throttled = try await Wire.post(url + "/auth/login", Self.login)
                #expect(throttled.status == 429)
                #expect(throttled.body == #"{"error":"too_many_requests","message":"too many login attempts"}"#)
                let retryAfter = try #require(throttled.retryAfter.flatMap { Int($0) })
                #expect((1...60).contains(retryAfter))
                let stats = simulator.stats()
                #expect(stats.logins == 1 && stats.loginsUnauthorized == 2 && stats.loginsThrottled == 1)
            }
        }

        @Test("a refresh rotates both tokens; the spent refresh token is a counted reuse; revoke-refresh ends the rest")
        func refreshRotation() async throws {
            try await Wire.withSimulator(.b2b) { simulator, url in
                let login = try await Wire.post(url + "/auth/login", Self.login)
                let firstAccess = try login.string("access_token")
                let firstRefresh = try login.string("refresh_token")
                let refreshed = try await Wire.post(url + "/auth/refresh", #"{"refresh_token":"\#(firstRefresh)"}"#)
                #expect(refreshed.status == 200, "\(refreshed.body)")
                #expect(try refreshed.object()["client_id"] as? Int == 4711)
                _ = try Wire.timestamp(try refreshed.string("access_expires_at"))
                let secondAccess = try refreshed.string("access_token")
                let secondRefresh = try refreshed.string("refresh_token")
                #expect(secondAccess != firstAccess && secondRefresh != firstRefresh)
                let pair = #"{"organization_id":"org_1","user_id":"kp_1"}"#
                for token in [firstAccess, secondAccess] {
                    let lookup = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: token)
                    #expect(lookup.status == 200, "old and new access tokens both work until they expire")
                }

                let invalid = #"{"error":"unauthorized","message":"invalid refresh token"}"#
                let reuse = try await Wire.post(url + "/auth/refresh", #"{"refresh_token":"\#(firstRefresh)"}"#)
                #expect(reuse.status == 401 && reuse.body == invalid)
                var stats = simulator.stats()
                #expect(stats.refreshes == 1 && stats.refreshesRejected == 1 && stats.refreshReuses == 1)

                let unknown = try await Wire.post(url + "/auth/refresh", #"{"refresh_token":"b2b_rt_forged"}"#)
                #expect(unknown.status == 401 && unknown.body == invalid)
                for body in ["{}", #"{"refresh_token":""}"#, "[]"] {
                    let missing = try await Wire.post(url + "/auth/refresh", body)
                    #expect(missing.status == 400)
                    #expect(missing.body == #"{"error":"validation_error","message":"refresh_token is required"}"#)
                }

                let revoke = try await Wire.send("POST", url + "/_admin/revoke-refresh")
                #expect(revoke.status == 204)
                let revoked = try await Wire.post(url + "/auth/refresh", #"{"refresh_token":"\#(secondRefresh)"}"#)
                #expect(revoked.status == 401 && revoked.body == invalid)
                stats = simulator.stats()
                #expect(stats.refreshes == 1 && stats.refreshesRejected == 3 && stats.refreshReuses == 1)
                #expect(stats.logins == 1, "a refresh is not a login")
            }
        }

        @Test("an access token stops at its stated access_expires_at: 401 token expired, counted once")
        func expiredAccessToken() async throws {
            try await Wire.withSimulator(
                .b2b,
                tokenLifetime: .seconds(2),
                refreshLifetime: .seconds(2)
            ) { simulator, url in
                let login = try await Wire.post(url + "/auth/login", Self.login)
                let token = try login.string("access_token")
                let pair = #"{"organization_id":"org_1","user_id":"kp_1"}"#
                let before = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: token)
                #expect(before.status == 200)
                try await Wire.sleep(pastInstant: try Wire.timestamp(try login.string("access_expires_at")))
                let after = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: token)
                #expect(after.status == 401 && after.body == #"{"error":"unauthorized","message":"token expired"}"#)
                #expect(simulator.stats().expiredTokenUses == 1 && simulator.stats().access401 == 1)

                try await Wire.sleep(pastInstant: try Wire.timestamp(try login.string("refresh_expires_at")))
                let refresh = try await Wire.post(
                    url + "/auth/refresh",
                    #"{"refresh_token":"\#(try login.string("refresh_token"))"}"#
                )
                #expect(refresh.status == 401)
                #expect(refresh.body == #"{"error":"unauthorized","message":"refresh token expired"}"#)
                #expect(simulator.stats().refreshesRejected == 1 && simulator.stats().refreshReuses == 0)
            }
        }

        @Test("lookup answers the directory's values (nulls kept) and its 400 and 401 bodies")
        func lookup() async throws {
            try await Wire.withSimulator(.b2b) { simulator, url in
                let token = try await Wire.post(url + "/auth/login", Self.login).string("access_token")
                let fields = ("customer_number", "price_tier", "currency")
                for user in ["kp_1", "kp_2", Wire.nullUsers.allNull, Wire.nullUsers.noTier] {
                    let answer = try await Wire.post(
                        url + "/api/v2/commerce/lookup",
                        #"{"organization_id":"org_1","user_id":"\#(user)"}"#,
                        bearer: token
                    )
                    try Wire.expectDirectoryAnswer(answer, organization: "org_1", user: user, fields: fields)
                }
                let validation = #"{"error":"validation_error","message":"organization_id and user_id are required"}"#
                for body in [#"{"organization_id":"org_1"}"#, #"{"organization_id":"org 1","user_id":"u"}"#, "nope"] {
                    let answer = try await Wire.post(url + "/api/v2/commerce/lookup", body, bearer: token)
                    #expect(answer.status == 400 && answer.body == validation, "\(body) → \(answer.body)")
                }
                let invalid = #"{"error":"unauthorized","message":"invalid token"}"#
                let pair = #"{"organization_id":"org_1","user_id":"kp_1"}"#
                for bearer in [nil, "b2b_at_forged"] {
                    let answer = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: bearer)
                    #expect(answer.status == 401 && answer.body == invalid)
                }
                _ = try await Wire.send("POST", url + "/_admin/revoke")
                let revoked = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: token)
                #expect(revoked.status == 401 && revoked.body == invalid)
                let stats = simulator.stats()
                #expect(stats.access200 == 4 && stats.access400 == 3 && stats.access401 == 3)
                #expect(stats.expiredTokenUses == 0)
            }
        }

        @Test("lookup over the rate limit answers 429 rate limited with Retry-After")
        func lookupRateLimited() async throws {
            try await Wire.withSimulator(.b2b, accessRate: 0.2, accessBurst: 1) { simulator, url in
                let token = try await Wire.post(url + "/auth/login", Self.login).string("access_token")
                let pair = #"{"organization_id":"org_1","user_id":"kp_1"}"#
                let first = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: token)
                #expect(first.status == 200)
                let second = try await Wire.post(url + "/api/v2/commerce/lookup", pair, bearer: token)
                #expect(second.status == 429)
                #expect(second.body == #"{"error":"too_many_requests","message":"rate limited"}"#)
                #expect(second.retryAfter.flatMap { Int($0) }.map { (1...6).contains($0) } == true)
                #expect(simulator.stats().access429 == 1)
            }
        }
    }
}

extension SimulatorDialectTests {
    @Suite("AchieveApex dialect")
    struct AchieveApex {
        static let login = #"{"strategy":"local","email":"enrich@example.com","password":"b2b-Pa55word!"}"#

        static func notAuthenticated(_ message: String) -> String {
            #"{"name":"NotAuthenticated","message":"\#(message)","code":401,"#
                + #""className":"not-authenticated","errors":{}}"#
        }

        static let tooManyRequests =
            #"{"name":"TooManyRequests","message":"Too many requests","code":429,"className":"too-many-requests","#
            + #""errors":{}}"#

        static func badRequest(_ message: String) -> String {
            #"{"name":"BadRequest","message":"\#(message)","code":400,"className":"bad-request","errors":{}}"#
        }

        /// The JSON object of one base64url part of a JWT.
        static func jwtPart(_ part: Substring) throws -> [String: Any] {
            var text = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            text += String(repeating: "=", count: (4 - text.count % 4) % 4)
            let data = try #require(Data(base64Encoded: text))
            return try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
        }

        @Test("a local login answers 201 with an HS256 JWT whose exp - iat is the token lifetime, and the user")
        func localLogin() async throws {
            try await Wire.withSimulator(
                .achieveApex,
                tokenLifetime: .seconds(3600)
            ) { simulator, url in
                let answer = try await Wire.post(url + "/authentication", Self.login)
                #expect(answer.status == 201, "\(answer.body)")
                let object = try answer.object()
                #expect(Set(object.keys) == ["accessToken", "authentication", "user"])
                #expect((object["authentication"] as? [String: Any])?["strategy"] as? String == "local")
                let user = try #require(object["user"] as? [String: Any])
                #expect(user["id"] as? String == "u_1" && user["email"] as? String == "enrich@example.com")
                #expect(user["name"] as? String == "Enrich Service" && user["avatar"] is NSNull)
                #expect(user["createdAt"] as? String == "2024-01-01T00:00:00.000Z")
                #expect(user["updatedAt"] as? String == "2024-01-01T00:00:00.000Z")

                let parts = try answer.string("accessToken").split(separator: ".", omittingEmptySubsequences: false)
                try #require(parts.count == 3)
                let header = try Self.jwtPart(parts[0])
                #expect(header["alg"] as? String == "HS256" && header["typ"] as? String == "access")
                let payload = try Self.jwtPart(parts[1])
                let issuedAt = try #require(payload["iat"] as? Int)
                let expiresAt = try #require(payload["exp"] as? Int)
                #expect(expiresAt - issuedAt == 3600)
                #expect(
                    payload["aud"] as? String == "https://achieveapex.com" && payload["iss"] as? String == "achieveapex"
                )
                #expect(payload["sub"] as? String == "u_1" && !((payload["jti"] as? String) ?? "").isEmpty)
                #expect(parts[2].count == 43, "a base64url HMAC-SHA256 signature")
                let lifetime = Date(timeIntervalSince1970: Double(expiresAt)).timeIntervalSince(try Wire.date(answer))
                #expect([3599, 3600].contains(lifetime), "exp - Date: \(lifetime)")

                // Across a whole second, so that a Date header lagging behind a second boundary would show.
                var tokens: Set = [try answer.string("accessToken")]
                for _ in 0..<8 {
                    try await Task.sleep(for: .milliseconds(125))
                    let again = try await Wire.post(url + "/authentication", Self.login)
                    let token = try again.string("accessToken")
                    tokens.insert(token)
                    let expiry = try #require(try Self.jwtPart(token.split(separator: ".")[1])["exp"] as? Int)
                    let lifetime = Date(timeIntervalSince1970: Double(expiry)).timeIntervalSince(try Wire.date(again))
                    #expect([3599, 3600].contains(lifetime), "exp - Date: \(lifetime)")
                }
                #expect(tokens.count == 9, "every login gets its own token")
                #expect(simulator.stats().logins == 9)
            }
        }

        @Test("authentication errors: 400 BadRequest, 401 Invalid login, 429 TooManyRequests with Retry-After")
        func authenticationErrors() async throws {
            try await Wire.withSimulator(.achieveApex, loginsPerMinute: 2) { simulator, url in
                for (body, message) in [
                    ("not json", "Invalid JSON body: an object of strings is expected"),
                    (
                        #"{"email":"enrich@example.com","password":"b2b-Pa55word!"}"#,
                        "Invalid authentication information (no `strategy` set)"
                    ),
                    (#"{"strategy":"oauth"}"#, "Invalid authentication information (strategy not allowed)"),
                    (#"{"strategy":"local","email":"enrich@example.com"}"#, "email and password are required"),
                    (#"{"strategy":"jwt"}"#, "accessToken is required"),
                ] {
                    let answer = try await Wire.post(url + "/authentication", body)
                    #expect(answer.status == 400, "\(body) → \(answer.body)")
                    #expect(answer.body == Self.badRequest(message))
                }
                let wrong = try await Wire.post(
                    url + "/authentication",
                    #"{"strategy":"local","email":"enrich@example.com","password":"nope"}"#
                )
                #expect(wrong.status == 401 && wrong.body == Self.notAuthenticated("Invalid login"))
                _ = try await Wire.post(url + "/authentication", Self.login)
                let throttled = try await Wire.post(url + "/authentication", Self.login)
                #expect(throttled.status == 429)
                #expect(
                    throttled.body
                        == Self.tooManyRequests
                )
                #expect(throttled.retryAfter.flatMap { Int($0) }.map { (1...60).contains($0) } == true)
                let stats = simulator.stats()
                #expect(stats.logins == 1 && stats.loginsUnauthorized == 1 && stats.loginsThrottled == 1)
            }
        }

        @Test("re-authentication with the jwt strategy answers 200 with the same token and does not extend it")
        func reauthentication() async throws {
            try await Wire.withSimulator(.achieveApex) { simulator, url in
                let token = try await Wire.post(url + "/authentication", Self.login).string("accessToken")
                let answer = try await Wire.post(
                    url + "/authentication",
                    #"{"strategy":"jwt","accessToken":"\#(token)"}"#
                )
                #expect(answer.status == 200, "\(answer.body)")
                #expect(try answer.string("accessToken") == token)
                #expect((try answer.object()["authentication"] as? [String: Any])?["strategy"] as? String == "jwt")
                #expect((try answer.object()["user"] as? [String: Any])?["id"] as? String == "u_1")
                let forged = try await Wire.post(url + "/authentication", #"{"strategy":"jwt","accessToken":"a.b.c"}"#)
                #expect(
                    forged.status == 401 && forged.body == Self.notAuthenticated("Invalid authentication information")
                )
                let stats = simulator.stats()
                #expect(stats.reauthentications == 1 && stats.logins == 1)
            }
        }

        @Test("DELETE /authentication logs out: the token then gets 401 everywhere, one logout counted")
        func logout() async throws {
            try await Wire.withSimulator(.achieveApex) { simulator, url in
                let token = try await Wire.post(url + "/authentication", Self.login).string("accessToken")
                let pair = #"{"organizationId":"org_1","userId":"kp_1"}"#
                #expect(try await Wire.post(url + "/commerce-context", pair, bearer: token).status == 200)
                let logout = try await Wire.send("DELETE", url + "/authentication", bearer: token)
                #expect(logout.status == 200, "\(logout.body)")
                #expect(try logout.string("accessToken") == token)
                #expect((try logout.object()["authentication"] as? [String: Any])?["strategy"] as? String == "jwt")

                let invalid = Self.notAuthenticated("Invalid authentication information")
                let context = try await Wire.post(url + "/commerce-context", pair, bearer: token)
                #expect(context.status == 401 && context.body == invalid)
                let reauthentication = try await Wire.post(
                    url + "/authentication",
                    #"{"strategy":"jwt","accessToken":"\#(token)"}"#
                )
                #expect(reauthentication.status == 401 && reauthentication.body == invalid)
                let twice = try await Wire.send("DELETE", url + "/authentication", bearer: token)
                #expect(twice.status == 401 && twice.body == invalid)
                let anonymous = try await Wire.send("DELETE", url + "/authentication")
                #expect(anonymous.status == 401 && anonymous.body == invalid)
                let stats = simulator.stats()
                #expect(stats.logouts == 1 && stats.access401 == 1 && stats.reauthentications == 0)
            }
        }

        @Test("a JWT stops at its exp: commerce-context and re-authentication say jwt expired, one expired use counted")
        func expiredJWT() async throws {
            try await Wire.withSimulator(
                .achieveApex,
                tokenLifetime: .seconds(2)
            ) { simulator, url in
                let token = try await Wire.post(url + "/authentication", Self.login).string("accessToken")
                let pair = #"{"organizationId":"org_1","userId":"kp_1"}"#
                #expect(try await Wire.post(url + "/commerce-context", pair, bearer: token).status == 200)
                let payload = try Self.jwtPart(token.split(separator: ".")[1])
                let expiresAt = try #require(payload["exp"] as? Int)
                try await Wire.sleep(pastInstant: Date(timeIntervalSince1970: Double(expiresAt)))
                let expired = Self.notAuthenticated("jwt expired")
                let context = try await Wire.post(url + "/commerce-context", pair, bearer: token)
                #expect(context.status == 401 && context.body == expired)
                #expect(simulator.stats().expiredTokenUses == 1)
                let reauthentication = try await Wire.post(
                    url + "/authentication",
                    #"{"strategy":"jwt","accessToken":"\#(token)"}"#
                )
                #expect(reauthentication.status == 401 && reauthentication.body == expired)
                #expect(simulator.stats().expiredTokenUses == 1, "a re-authentication is not a use")
            }
        }

        @Test("commerce-context answers the directory's values (nulls kept) and its 400, 401 and 429 bodies")
        func commerceContext() async throws {
            try await Wire.withSimulator(.achieveApex, accessRate: 0.2, accessBurst: 5) { simulator, url in
                let token = try await Wire.post(url + "/authentication", Self.login).string("accessToken")
                let fields = ("customerNumber", "priceTier", "currencyCode")
                for user in ["kp_1", Wire.nullUsers.allNull, Wire.nullUsers.noTier] {
                    let answer = try await Wire.post(
                        url + "/commerce-context",
                        #"{"organizationId":"org_1","userId":"\#(user)"}"#,
                        bearer: token
                    )
                    try Wire.expectDirectoryAnswer(answer, organization: "org_1", user: user, fields: fields)
                }
                let malformed = try await Wire.post(
                    url + "/commerce-context",
                    #"{"organizationId":"org_1","userId":"bad/user"}"#,
                    bearer: token
                )
                #expect(
                    malformed.status == 400
                        && malformed.body == Self.badRequest("organizationId and userId are required")
                )
                let pair = #"{"organizationId":"org_1","userId":"kp_1"}"#
                let missing = try await Wire.post(url + "/commerce-context", pair)
                #expect(
                    missing.status == 401 && missing.body == Self.notAuthenticated("Invalid authentication information")
                )
                let limited = try await Wire.post(url + "/commerce-context", pair, bearer: token)
                #expect(limited.status == 429)
                #expect(
                    limited.body
                        == Self.tooManyRequests
                )
                #expect(limited.retryAfter.flatMap { Int($0) }.map { (1...6).contains($0) } == true)
                let stats = simulator.stats()
                #expect(stats.access200 == 3 && stats.access400 == 1 && stats.access401 == 1 && stats.access429 == 1)
            }
        }
    }
}

extension SimulatorDialectTests {
    @Suite("Each dialect serves only its own routes")
    struct Routing {
        @Test("nymble does not serve /auth/login; b2b does not serve /api/auth/login; all serve /_stats")
        func routes() async throws {
            let nymbleLogin =
                #"{"OrgCode":"org_12345","ClientId":"sdaf43tfsdg45dg","ClientSecret":"QsFdas%4F1asr23tgb675%3"}"#
            let b2bLogin = SimulatorDialectTests.B2B.login
            let apexLogin = SimulatorDialectTests.AchieveApex.login
            let expectations: [(APIDialect, [(path: String, body: String, status: Int)])] = [
                (
                    .nymble,
                    [
                        ("/auth/login", b2bLogin, 404), ("/authentication", apexLogin, 404),
                        ("/api/auth/login", nymbleLogin, 200),
                    ]
                ),
                (
                    .b2b,
                    [
                        ("/api/auth/login", nymbleLogin, 404), ("/api/auth/access", "{}", 404),
                        ("/authentication", apexLogin, 404), ("/auth/login", b2bLogin, 200),
                    ]
                ),
                (
                    .achieveApex,
                    [
                        ("/api/auth/login", nymbleLogin, 404), ("/auth/login", b2bLogin, 404),
                        ("/authentication", apexLogin, 201),
                    ]
                ),
            ]
            for (dialect, routes) in expectations {
                try await Wire.withSimulator(dialect) { _, url in
                    for route in routes {
                        let answer = try await Wire.post(url + route.path, route.body)
                        #expect(answer.status == route.status, "\(dialect) POST \(route.path)")
                    }
                }
            }
            for dialect in APIDialect.allCases {
                try await Wire.withSimulator(dialect) { _, url in
                    let stats = try await Wire.send("GET", url + "/_stats")
                    #expect(stats.status == 200 && stats.date != nil)
                    let decoded = try JSONDecoder().decode(SimulatorStats.self, from: Data(stats.body.utf8))
                    #expect(decoded.refreshes == 0 && decoded.logouts == 0)
                    let revoke = try await Wire.send("POST", url + "/_admin/revoke")
                    #expect(revoke.status == 204)
                }
            }
        }

        @Test("nymble's answers keep their bodies: PascalCase login and access, its own error bodies")
        func nymbleUnchanged() async throws {
            try await Wire.withSimulator(.nymble) { _, url in
                let login = try await Wire.post(
                    url + "/api/auth/login",
                    #"{"OrgCode":"org_12345","ClientId":"sdaf43tfsdg45dg","ClientSecret":"QsFdas%4F1asr23tgb675%3"}"#
                )
                #expect(login.status == 200)
                #expect(try login.object()["TokenType"] as? String == "api-key")
                #expect(try login.object()["ExpiresIn"] as? Int == 86_400)
                let token = try login.string("AccessToken")
                let user = Wire.nullUsers.allNull
                let access = try await Wire.post(
                    url + "/api/auth/access",
                    #"{"OrganizationId":"org_1","UserId":"\#(user)"}"#,
                    bearer: token
                )
                #expect(access.body == #"{"CustomerNumber":null,"PriceTier":null,"CurrencyCode":null}"#)
                let bad = try await Wire.post(url + "/api/auth/access", #"{"OrganizationId":"org_1"}"#, bearer: token)
                #expect(bad.status == 400 && bad.body == #"{"error":"OrganizationId or UserId missing or malformed"}"#)
                let forged = try await Wire.post(url + "/api/auth/access", #"{"OrganizationId":"o","UserId":"u"}"#)
                #expect(forged.status == 401 && forged.body == #"{"error":"invalid token"}"#)
            }
        }
    }
}
