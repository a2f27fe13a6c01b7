import EnrichCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NymbleAPI
import ServiceLifecycle

/// A faithful simulator of the Nymble Commerce auth API (`../shared/api-contract.md`), over real HTTP, and of
/// the two other login dialects enrich speaks (``SimulatorConfiguration/dialect``).
///
/// Nymble (the default):
/// - `POST /api/auth/login`: 200 with `AccessToken` (JWT-shaped, really expiring), `TokenType` "api-key",
///   `ExpiresIn`; 401 on wrong credentials; 429 beyond 10 logins per minute per ClientId.
/// - `POST /api/auth/access`: 401 for a missing, unknown, expired or revoked bearer token; 400 for a
///   missing or malformed id; 200 with the deterministic ``CommerceDirectory`` context (nulls included).
///
/// B2B: `POST /auth/login`, `POST /auth/refresh` (rotating refresh tokens), `POST /api/v2/commerce/lookup`,
/// `POST /_admin/revoke-refresh`. AchieveApex: `POST /authentication` (`local` and `jwt` strategies),
/// `DELETE /authentication` (logout), `POST /commerce-context`. Their answers carry a `Date` header exact to
/// the second they are sent, so that `access_expires_at` or `exp` minus `Date` is the token's lifetime.
///
/// In every dialect:
/// - Knobs: a token bucket on the enrichment call answering 429 with Retry-After as seconds, an HTTP-date or
///   absent; latency; shares of 5xx, dropped connections and slow answers.
/// - `GET /_stats` returns ``SimulatorStats`` as JSON; `POST /_admin/revoke` revokes every access token.
public struct NymbleSimulator: Service {
    public let configuration: SimulatorConfiguration
    let state: SimulatorState
    private let logger: Logger

    public init(configuration: SimulatorConfiguration = .init(), logger: Logger = Logger(label: "nymble.simulator")) {
        self.configuration = configuration
        self.state = SimulatorState(configuration: configuration)
        self.logger = logger
    }

    /// The counters so far.
    public func stats() -> SimulatorStats { state.stats() }

    /// Revokes every access token issued so far (their next use gets 401).
    public func revokeAllTokens() { state.revokeAll() }

    /// Revokes every B2B refresh token issued so far (their next refresh gets 401).
    public func revokeAllRefreshTokens() { state.revokeAllRefreshTokens() }

    /// Serves until cancelled or gracefully shut down.
    public func run() async throws {
        try await run(onListening: { _ in })
    }

    /// Serves until cancelled; `onListening` receives the bound port (useful with port 0).
    public func run(onListening: @escaping @Sendable (Int) async -> Void) async throws {
        let address = BindAddress.hostname(configuration.host, port: configuration.port)
        guard configuration.dialect == .nymble else {
            // Absolute expiries need a Date header exact to the second (Hummingbird's lags up to a second).
            try await ExactDateServer.run(
                responder: makeRouter().buildResponder(),
                address: address,
                logger: logger,
                onListening: onListening
            )
            return
        }
        let application = Application(
            router: makeRouter(),
            configuration: .init(address: address, serverName: nil),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) },
            logger: logger
        )
        try await application.runService()
    }

    /// Starts a simulator on a free loopback port, runs `body` with its base URL, then stops it.
    public static func withRunning<Result: Sendable>(
        _ configuration: SimulatorConfiguration = .init(),
        logger: Logger = Logger(label: "nymble.simulator"),
        _ body: (NymbleSimulator, String) async throws -> Result
    ) async throws -> Result {
        var configuration = configuration
        configuration.port = 0
        let simulator = NymbleSimulator(configuration: configuration, logger: logger)
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await simulator.run(onListening: { port in
                    continuation.yield(port)
                    continuation.finish()
                })
            }
            defer { group.cancelAll() }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw CancellationError() }
            return try await body(simulator, "http://\(configuration.host):\(port)")
        }
    }

    // MARK: Routes

    func makeRouter() -> Router<SimulatorContext> {
        let router = Router(context: SimulatorContext.self)
        switch configuration.dialect {
        case .nymble:
            router.post("/api/auth/login") { request, _ in try await login(request) }
            router.post("/api/auth/access") { request, context in
                try await enrichment(.nymble, request, context: context)
            }
        case .b2b:
            router.post("/auth/login") { request, _ in try await b2bLogin(request) }
            router.post("/auth/refresh") { request, _ in try await b2bRefresh(request) }
            router.post("/api/v2/commerce/lookup") { request, context in
                try await enrichment(.b2b, request, context: context)
            }
            router.post("/_admin/revoke-refresh") { _, _ in
                state.revokeAllRefreshTokens()
                return Response(status: .noContent)
            }
        case .achieveApex:
            router.post("/authentication") { request, _ in try await apexAuthenticate(request) }
            router.delete("/authentication") { request, _ in try await apexLogOut(request) }
            router.post("/commerce-context") { request, context in
                try await enrichment(.achieveApex, request, context: context)
            }
        }
        router.get("/_stats") { _, _ in
            let body = try JSONEncoder().encode(state.stats())
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: body))
            )
        }
        router.post("/_admin/revoke") { _, _ in
            state.revokeAll()
            return Response(status: .noContent)
        }
        return router
    }

    private func login(_ request: Request) async throws -> Response {
        state.enter()
        defer { state.leave() }
        try await delay(slow: false)
        let body = try await request.body.collect(upTo: 64 * 1024)
        struct Login: Decodable {
            let OrgCode: String
            let ClientId: String
            let ClientSecret: String
        }
        guard let login = try? JSONDecoder().decode(Login.self, from: Data(buffer: body)) else {
            return Self.json(.badRequest, #"{"error":"OrgCode, ClientId and ClientSecret are required strings"}"#)
        }
        if let wait = state.admitLogin(account: login.ClientId) {
            var headers = HTTPFields()
            headers[.retryAfter] = String(Int(wait.inSeconds.rounded(.up)))
            return Self.json(.tooManyRequests, #"{"error":"too many logins"}"#, headers: headers)
        }
        guard login.OrgCode == configuration.orgCode, login.ClientId == configuration.clientId,
            login.ClientSecret == configuration.clientSecret
        else {
            state.update { $0.loginsUnauthorized += 1 }
            return Self.json(.unauthorized, #"{"error":"invalid credentials"}"#)
        }
        let token = state.issueToken(clientId: login.ClientId)
        let lifetime = Int64(configuration.tokenLifetime.inSeconds.rounded())
        return Self.json(.ok, #"{"AccessToken":"\#(token)","TokenType":"api-key","ExpiresIn":\#(lifetime)}"#)
    }

    /// Waits the configured latency (plus the slow delay when `slow`).
    func delay(slow: Bool) async throws {
        let latency = configuration.latency
        var wait =
            latency.maximum > latency.minimum
            ? .seconds(Double.random(in: latency.minimum.inSeconds...latency.maximum.inSeconds)) : latency.minimum
        if slow { wait += configuration.slowDelay }
        if wait > .zero { try await Task.sleep(for: wait) }
    }

    /// A JSON string or `null` for a ``CommerceDirectory`` value (which never needs escaping).
    static func jsonValue(_ text: String?) -> String {
        guard let text else { return "null" }
        return "\"" + text + "\""
    }

    /// `text` as a JSON string literal, quoted and escaped.
    static func jsonString(_ text: String) -> String {
        var literal = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": literal += "\\\""
            case "\\": literal += "\\\\"
            case "\n": literal += "\\n"
            case "\r": literal += "\\r"
            case "\t": literal += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                literal += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: literal.unicodeScalars.append(scalar)
            }
        }
        return literal + "\""
    }

    /// The bearer token of `Authorization: Bearer <token>`, if any.
    static func bearer(_ request: Request) -> String? {
        let authorization = request.headers[.authorization] ?? ""
        return authorization.hasPrefix("Bearer ") ? String(authorization.dropFirst(7)) : nil
    }

    /// `Retry-After: <seconds>` (at least 1), as the B2B and AchieveApex login limits answer.
    static func retryAfterSeconds(_ wait: Duration) -> HTTPFields {
        var headers = HTTPFields()
        headers[.retryAfter] = String(max(1, Int(wait.inSeconds.rounded(.up))))
        return headers
    }

    static func json(_ status: HTTPResponse.Status, _ body: String, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// The request context of the simulator: Hummingbird's basic context plus the channel, so that a dropped
/// connection can really be dropped.
public struct SimulatorContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}
