import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The B2B dialect's error bodies: `{"error": "<code>", "message": "<text>"}`.
enum B2BError {
    static func body(_ error: String, _ message: String) -> String {
        "{\"error\":\(NymbleSimulator.jsonString(error)),\"message\":\(NymbleSimulator.jsonString(message))}"
    }
}

/// The B2B password-login API (`../shared/api-contract.md`, section 2).
///
/// - `POST /auth/login` with `{"username", "password"}`: 200 with `access_token`, `refresh_token`,
///   `access_expires_at`, `refresh_expires_at` (UTC, whole seconds) and `client_id`; 400 `validation_error`,
///   401 `unauthorized`, 429 `too_many_requests` with Retry-After beyond the login limit per username.
/// - `POST /auth/refresh` with `{"refresh_token"}` (our assumption: the contract names no refresh endpoint):
///   200 with a new access and a new refresh token; the presented refresh token is spent (rotation). An
///   unknown, revoked, spent or expired one gets 401.
extension NymbleSimulator {
    /// B2B's client id, the same for every login.
    static let b2bClientId = 4711

    func b2bLogin(_ request: Request) async throws -> Response {
        state.enter()
        defer { state.leave() }
        try await delay(slow: false)
        let body = try await request.body.collect(upTo: 64 * 1024)
        struct Login: Decodable {
            let username: String?
            let password: String?
        }
        guard let login = try? JSONDecoder().decode(Login.self, from: Data(buffer: body)),
            let username = login.username, let password = login.password, !username.isEmpty, !password.isEmpty
        else {
            return Self.json(.badRequest, B2BError.body("validation_error", "username and password are required"))
        }
        if let wait = state.admitLogin(account: username) {
            return Self.json(
                .tooManyRequests,
                B2BError.body("too_many_requests", "too many login attempts"),
                headers: Self.retryAfterSeconds(wait)
            )
        }
        guard username == configuration.username, password == configuration.password else {
            state.update { $0.loginsUnauthorized += 1 }
            return Self.json(.unauthorized, B2BError.body("unauthorized", "invalid credentials"))
        }
        return Self.json(.ok, Self.b2bGrantBody(state.issueB2BGrant()))
    }

    func b2bRefresh(_ request: Request) async throws -> Response {
        state.enter()
        defer { state.leave() }
        try await delay(slow: false)
        let body = try await request.body.collect(upTo: 64 * 1024)
        struct Refresh: Decodable {
            let refresh_token: String?
        }
        guard let refresh = try? JSONDecoder().decode(Refresh.self, from: Data(buffer: body)),
            let token = refresh.refresh_token, !token.isEmpty
        else {
            return Self.json(.badRequest, B2BError.body("validation_error", "refresh_token is required"))
        }
        switch state.refresh(token) {
        case .rotated(let grant):
            return Self.json(.ok, Self.b2bGrantBody(grant))
        case .expired:
            return Self.json(.unauthorized, B2BError.body("unauthorized", "refresh token expired"))
        case .invalid:
            return Self.json(.unauthorized, B2BError.body("unauthorized", "invalid refresh token"))
        }
    }

    static func b2bGrantBody(_ grant: SimulatorState.B2BGrant) -> String {
        "{\"access_token\":\"\(grant.accessToken)\",\"refresh_token\":\"\(grant.refreshToken)\","
            + "\"access_expires_at\":\"\(timestamp(grant.accessExpiresAt))\","
            + "\"refresh_expires_at\":\"\(timestamp(grant.refreshExpiresAt))\",\"client_id\":\(b2bClientId)}"
    }

    /// UTC ISO-8601 to the second: `2026-12-07T10:30:00Z`.
    static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(timeZone: TimeZone(identifier: "UTC")!))
    }
}
