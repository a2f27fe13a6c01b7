import EnrichCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NymbleAPI
import ServiceLifecycle

/// A faithful simulator of the Nymble Commerce auth API (`../shared/api-contract.md`), over real HTTP.
///
/// - `POST /api/auth/login`: 200 with `AccessToken` (JWT-shaped, really expiring), `TokenType` "api-key",
///   `ExpiresIn`; 401 on wrong credentials; 429 beyond 10 logins per minute per ClientId.
/// - `POST /api/auth/access`: 401 for a missing, unknown, expired or revoked bearer token; 400 for a
///   missing or malformed id; 200 with the deterministic ``CommerceDirectory`` context (nulls included).
/// - Knobs: an `/access` token bucket answering 429 with Retry-After as seconds, an HTTP-date or absent;
///   latency; shares of 5xx, dropped connections and slow answers.
/// - `GET /_stats` returns ``SimulatorStats`` as JSON; `POST /_admin/revoke` revokes every token.
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

    /// Revokes every token issued so far (their next use gets 401).
    public func revokeAllTokens() { state.revokeAll() }

    /// Serves until cancelled or gracefully shut down.
    public func run() async throws {
        try await run(onListening: { _ in })
    }

    /// Serves until cancelled; `onListening` receives the bound port (useful with port 0).
    public func run(onListening: @escaping @Sendable (Int) async -> Void) async throws {
        let application = Application(
            router: makeRouter(),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
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
        router.post("/api/auth/login") { request, _ in try await login(request) }
        router.post("/api/auth/access") { request, context in try await access(request, context: context) }
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
        if let wait = state.admitLogin(clientId: login.ClientId) {
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

    private func access(_ request: Request, context: SimulatorContext) async throws -> Response {
        state.enter()
        defer { state.leave() }
        let slow = configuration.slowRate > 0 && Double.random(in: 0..<1) < configuration.slowRate
        try await delay(slow: slow)
        if let wait = state.admitAccess() {
            state.update { $0.access429 += 1 }
            var headers = HTTPFields()
            if configuration.retryAfterStyle == .seconds {
                headers[.retryAfter] = String(max(1, Int(wait.inSeconds.rounded(.up))))
            } else if configuration.retryAfterStyle == .httpDate {
                headers[.retryAfter] = RetryAfter.format(Date().addingTimeInterval(max(1, wait.inSeconds.rounded(.up))))
            }
            return Self.json(.tooManyRequests, #"{"error":"rate limited"}"#, headers: headers)
        }
        let authorization = request.headers[.authorization] ?? ""
        let bearer = authorization.hasPrefix("Bearer ") ? String(authorization.dropFirst(7)) : nil
        switch state.check(bearer: bearer) {
        case .valid: break
        case .missing, .unknown, .revoked, .expired:
            state.update { $0.access401 += 1 }
            return Self.json(.unauthorized, #"{"error":"invalid token"}"#)
        }
        let body = try await request.body.collect(upTo: 64 * 1024)
        struct Access: Decodable {
            let OrganizationId: String?
            let UserId: String?
        }
        guard let pair = try? JSONDecoder().decode(Access.self, from: Data(buffer: body)),
            let organizationId = pair.OrganizationId, let userId = pair.UserId,
            CommerceDirectory.isWellFormed(organizationId), CommerceDirectory.isWellFormed(userId)
        else {
            state.update { $0.access400 += 1 }
            return Self.json(.badRequest, #"{"error":"OrganizationId or UserId missing or malformed"}"#)
        }
        state.recordArrival(userId: userId)
        if configuration.dropRate > 0 && Double.random(in: 0..<1) < configuration.dropRate {
            state.update { $0.accessDropped += 1 }
            try await context.channel.close()
            throw HTTPError(.internalServerError)
        }
        if configuration.serverErrorRate > 0 && Double.random(in: 0..<1) < configuration.serverErrorRate {
            state.update { $0.access5xx += 1 }
            let status: HTTPResponse.Status = [.internalServerError, .badGateway, .serviceUnavailable].randomElement()!
            return Self.json(status, #"{"error":"try again"}"#)
        }
        let answer = CommerceDirectory.context(organizationId: organizationId, userId: userId)
        state.update { $0.access200 += 1 }
        return Self.json(
            .ok,
            #"{"CustomerNumber":\#(Self.jsonValue(answer.customerNumber)),"PriceTier":\#(Self.jsonValue(answer.priceTier)),"CurrencyCode":\#(Self.jsonValue(answer.currencyCode))}"#
        )
    }

    private func delay(slow: Bool) async throws {
        let latency = configuration.latency
        var wait =
            latency.maximum > latency.minimum
            ? .seconds(Double.random(in: latency.minimum.inSeconds...latency.maximum.inSeconds)) : latency.minimum
        if slow { wait += configuration.slowDelay }
        if wait > .zero { try await Task.sleep(for: wait) }
    }

    private static func jsonValue(_ text: String?) -> String {
        guard let text else { return "null" }
        return "\"" + text + "\""
    }

    private static func json(_ status: HTTPResponse.Status, _ body: String, headers: HTTPFields = [:]) -> Response {
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
