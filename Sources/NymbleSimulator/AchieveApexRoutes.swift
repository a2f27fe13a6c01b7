import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// AchieveApex's (Feathers') error bodies: `{"name", "message", "code", "className", "errors": {}}`.
struct FeathersError: Sendable {
    let name: String
    let code: Int
    let className: String

    static let badRequest = FeathersError(name: "BadRequest", code: 400, className: "bad-request")
    static let notAuthenticated = FeathersError(name: "NotAuthenticated", code: 401, className: "not-authenticated")
    static let tooManyRequests = FeathersError(name: "TooManyRequests", code: 429, className: "too-many-requests")

    /// The Feathers error of a 5xx status: GeneralError (500), BadGateway (502), Unavailable (503).
    init(status: HTTPResponse.Status) {
        switch status {
        case .badGateway: self.init(name: "BadGateway", code: 502, className: "bad-gateway")
        case .serviceUnavailable: self.init(name: "Unavailable", code: 503, className: "unavailable")
        default: self.init(name: "GeneralError", code: status.code, className: "general-error")
        }
    }

    init(name: String, code: Int, className: String) {
        self.name = name
        self.code = code
        self.className = className
    }

    var status: HTTPResponse.Status { HTTPResponse.Status(code: code) }

    func body(_ message: String) -> String {
        "{\"name\":\"\(name)\",\"message\":\(NymbleSimulator.jsonString(message)),\"code\":\(code),"
            + "\"className\":\"\(className)\",\"errors\":{}}"
    }
}

/// The AchieveApex API (`../shared/api-contract.md`, section 3), a Feathers authentication service.
///
/// - `POST /authentication` with `{"strategy": "local", "email", "password"}`: 201 with `accessToken` (an
///   HS256 JWT whose `exp` is its expiry), `authentication` and `user`; 401 NotAuthenticated "Invalid login";
///   429 TooManyRequests with Retry-After beyond the login limit per email; 400 BadRequest.
/// - `POST /authentication` with `{"strategy": "jwt", "accessToken"}`: 200 with the same token (its `exp`
///   unchanged); 401 "jwt expired" or "Invalid authentication information".
/// - `DELETE /authentication` with the Bearer header: 200, and the token is invalid from then on.
extension NymbleSimulator {
    /// The one user behind the accepted email.
    static let apexUserId = "u_1"

    func apexAuthenticate(_ request: Request) async throws -> Response {
        state.enter()
        defer { state.leave() }
        try await delay(slow: false)
        let body = try await request.body.collect(upTo: 64 * 1024)
        struct Authentication: Decodable {
            let strategy: String?
            let email: String?
            let password: String?
            let accessToken: String?
        }
        guard let authentication = try? JSONDecoder().decode(Authentication.self, from: Data(buffer: body)) else {
            return Self.feathers(.badRequest, "Invalid JSON body: an object of strings is expected")
        }
        switch authentication.strategy {
        case "local":
            guard let email = authentication.email, let password = authentication.password, !email.isEmpty,
                !password.isEmpty
            else {
                return Self.feathers(.badRequest, "email and password are required")
            }
            if let wait = state.admitLogin(account: email) {
                return Self.feathers(.tooManyRequests, "Too many requests", headers: Self.retryAfterSeconds(wait))
            }
            guard email == configuration.email, password == configuration.password else {
                state.update { $0.loginsUnauthorized += 1 }
                return Self.feathers(.notAuthenticated, "Invalid login")
            }
            let token = state.issueJWT(subject: Self.apexUserId)
            return Self.json(.created, apexAuthenticationBody(token: token, strategy: "local"))
        case "jwt":
            guard let token = authentication.accessToken, !token.isEmpty else {
                return Self.feathers(.badRequest, "accessToken is required")
            }
            switch state.check(bearer: token, countingExpired: false) {
            case .valid:
                state.update { $0.reauthentications += 1 }
                return Self.json(.ok, apexAuthenticationBody(token: token, strategy: "jwt"))
            case .expired:
                return Self.feathers(.notAuthenticated, "jwt expired")
            case .missing, .unknown, .revoked:
                return Self.feathers(.notAuthenticated, "Invalid authentication information")
            }
        case nil:
            return Self.feathers(.badRequest, "Invalid authentication information (no `strategy` set)")
        default:
            return Self.feathers(.badRequest, "Invalid authentication information (strategy not allowed)")
        }
    }

    func apexLogOut(_ request: Request) async throws -> Response {
        state.enter()
        defer { state.leave() }
        try await delay(slow: false)
        let token = Self.bearer(request)
        switch state.logOut(bearer: token) {
        case .valid:
            return Self.json(.ok, apexAuthenticationBody(token: token ?? "", strategy: "jwt"))
        case .expired:
            return Self.feathers(.notAuthenticated, "jwt expired")
        case .missing, .unknown, .revoked:
            return Self.feathers(.notAuthenticated, "Invalid authentication information")
        }
    }

    /// The answer of a login, a re-authentication or a logout.
    private func apexAuthenticationBody(token: String, strategy: String) -> String {
        let timestamp = Self.jsonString("2024-01-01T00:00:00.000Z")
        let user =
            "{\"id\":\"\(Self.apexUserId)\",\"email\":\(Self.jsonString(configuration.email)),"
            + "\"name\":\"Enrich Service\",\"avatar\":null,\"createdAt\":\(timestamp),\"updatedAt\":\(timestamp)}"
        return "{\"accessToken\":\"\(token)\",\"authentication\":{\"strategy\":\"\(strategy)\"},\"user\":\(user)}"
    }

    static func feathers(_ error: FeathersError, _ message: String, headers: HTTPFields = [:]) -> Response {
        json(error.status, error.body(message), headers: headers)
    }
}
