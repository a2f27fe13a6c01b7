import AsyncHTTPClient
import EnrichCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// How the client talks to the API.
public struct NymbleClientConfiguration: Sendable {
    /// The API's base URL. Default: the vendor's production host.
    public var baseURL: String
    /// ``baseURL`` without a trailing slash: what paths are appended to, and what names the API elsewhere.
    public var normalizedBaseURL: String { baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL }
    /// Upper bound of HTTP/1.1 connections to the API host; size it to the worker concurrency.
    public var maximumConnections: Int
    /// Time to establish a connection (TCP + TLS).
    public var connectTimeout: Duration
    /// Time for a whole request, from send to the last byte of the answer.
    public var requestTimeout: Duration
    /// Answers larger than this are rejected as undecodable instead of being buffered.
    public var maximumResponseBytes: Int
    /// How the API's certificate is verified for `https`: the system's trust roots and full verification
    /// by default.
    public var tlsConfiguration: TLSConfiguration
    /// A connection idle for longer is closed instead of reused (servers close idle ones too).
    public var idleTimeout: Duration
    /// How the API logs in, renews and logs out.
    public var dialect: APIDialect
    /// B2B: the refresh endpoint (the contract names none).
    public var refreshPath: String
    /// The enrichment call: Nymble's `POST /api/auth/access` unless the profile says otherwise.
    public var call: EnrichmentCall

    public init(
        baseURL: String = "https://api.achievemomentum.com",
        maximumConnections: Int = 32,
        connectTimeout: Duration = .seconds(5),
        requestTimeout: Duration = .seconds(30),
        maximumResponseBytes: Int = 64 * 1024,
        tlsConfiguration: TLSConfiguration = .makeClientConfiguration(),
        idleTimeout: Duration = .seconds(60),
        dialect: APIDialect = .nymble,
        refreshPath: String = B2BDialect.defaultRefreshPath,
        call: EnrichmentCall = .nymble
    ) {
        self.dialect = dialect
        self.refreshPath = refreshPath
        self.call = call
        self.baseURL = baseURL
        self.maximumConnections = maximumConnections
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.maximumResponseBytes = maximumResponseBytes
        self.tlsConfiguration = tlsConfiguration
        self.idleTimeout = idleTimeout
    }
}

/// The API client: the login conversation of its dialect (``AuthDialect``: login, refresh, logout) and the
/// profile's enrichment call (``EnrichmentCall``, Nymble's `POST /api/auth/access` by default).
///
/// The enrichment call goes through ``HTTP1Client`` (keep-alive connections sized to the concurrency, TLS
/// verified, one pre-encoded write per request), the login conversation through AsyncHTTPClient; create the
/// client with ``withClient(configuration:logger:_:)`` so that its connections are closed with its scope.
public struct NymbleClient: Sendable {
    public let configuration: NymbleClientConfiguration
    /// Logins go through a client of their own that does not retry a failed connect: a refused connection
    /// (nothing listens at the API's address) fails the login at once instead of after the connect timeout,
    /// so a wrong port or a stopped API is reported in a second.
    private let loginHTTP: HTTPClient
    private let logger: Logger
    /// The login conversation of the configured dialect.
    public let auth: any AuthDialect
    /// The hot path: the enrichment call on connections of its own.
    private let accessHTTP: HTTP1Client
    private let accessRequest: HTTP1RequestTemplate
    /// The call's JSON body around the pair: `{"<organization>":` and `,"<user>":`.
    private let bodyOpen: [UInt8]
    private let bodyMiddle: [UInt8]
    /// Read once here, not from ``configuration`` per call (a copy of the call retains seven strings).
    private let callIsGet: Bool
    private let answerFields: AnswerFields

    /// Runs `body` with a client whose connection pool is shut down when `body` returns.
    public static func withClient<Result>(
        configuration: NymbleClientConfiguration = .init(),
        logger: Logger,
        _ body: (NymbleClient) async throws -> Result
    ) async throws -> Result {
        var login = HTTPClient.Configuration()
        login.tlsConfiguration = configuration.tlsConfiguration
        login.timeout = .init(connect: .init(configuration.connectTimeout), read: .init(configuration.requestTimeout))
        login.decompression = .disabled
        login.redirectConfiguration = .disallow
        login.connectionPool = .init(
            idleTimeout: .init(configuration.idleTimeout),
            concurrentHTTP1ConnectionsPerHostSoftLimit: 1
        )
        login.connectionPool.retryConnectionEstablishment = false
        guard let (origin, basePath) = HTTP1Client.Origin.parse(baseURL: configuration.normalizedBaseURL) else {
            throw NymbleAPIError(
                .unreachable,
                endpoint: "access",
                detail: "the base URL is not http(s)://host[:port][/path]: \(configuration.baseURL)"
            )
        }
        let accessHTTP = try HTTP1Client(
            origin: origin,
            tlsConfiguration: configuration.tlsConfiguration,
            connectTimeout: configuration.connectTimeout,
            requestTimeout: configuration.requestTimeout,
            maximumResponseBytes: configuration.maximumResponseBytes,
            maximumIdle: configuration.maximumConnections,
            maximumIdleTime: configuration.idleTimeout
        )
        defer { accessHTTP.shutdown() }
        return try await HTTPClient.withHTTPClient(configuration: login) { loginClient in
            try await body(
                NymbleClient(
                    configuration: configuration,
                    loginHTTP: loginClient,
                    accessHTTP: accessHTTP,
                    basePath: basePath,
                    origin: origin,
                    logger: logger
                )
            )
        }
    }

    /// AsyncHTTPClient tags its logger with a request id on every request, and a stream handler re-renders its
    /// metadata on each change (about 4% of the CPU per call, profiled): its trace lines are not worth that.
    private static let requestLogger = Logger(label: "nymble.http", factory: { _ in SwiftLogNoOpLogHandler() })

    init(
        configuration: NymbleClientConfiguration,
        loginHTTP: HTTPClient,
        accessHTTP: HTTP1Client,
        basePath: String,
        origin: HTTP1Client.Origin,
        logger: Logger
    ) {
        self.configuration = configuration
        self.loginHTTP = loginHTTP
        self.accessHTTP = accessHTTP
        self.logger = logger
        let auth = configuration.dialect.auth(refreshPath: configuration.refreshPath)
        self.auth = auth
        let call = configuration.call
        self.accessRequest = HTTP1RequestTemplate(
            method: call.method.rawValue,
            path: basePath + call.path,
            origin: origin,
            authorization: auth.authorization
        )
        self.bodyOpen = Array(("{" + JSONText.quoted(call.organizationField) + ":").utf8)
        self.bodyMiddle = Array(("," + JSONText.quoted(call.userField) + ":").utf8)
        self.callIsGet = call.method == .get
        self.answerFields = call.answer
    }

    /// Nymble's `POST /api/auth/login`.
    public func login(_ credentials: NymbleCredentials) async throws(NymbleAPIError) -> LoginGrant {
        try await login(.nymble(credentials))
    }

    /// Logs in as the dialect says (Nymble's `/api/auth/login`, B2B's `/auth/login`, AchieveApex's
    /// `local` strategy).
    ///
    /// - Throws: ``NymbleAPIError`` — `.invalidCredentials` on 401, `.rateLimited` on 429 (with Retry-After),
    ///   `.badRequest`, `.serverError`, `.transport`, `.unreachable` or `.undecodable` otherwise.
    public func login(_ credentials: APICredentials) async throws(NymbleAPIError) -> LoginGrant {
        guard credentials.dialect == auth.dialect else {
            throw NymbleAPIError(
                .invalidCredentials,
                api: auth.apiName,
                endpoint: "login",
                detail: "\(credentials.dialect) credentials given for an API of the \(auth.dialect) dialect"
            )
        }
        let answer = try await exchange(auth.loginRequest(credentials), endpoint: "login")
        guard auth.isSuccess(answer.status) else {
            if answer.status == 401, case .nymble(let nymble) = credentials {
                throw NymbleAPIError(
                    .invalidCredentials,
                    endpoint: "login",
                    status: answer.status,
                    detail: "ClientId/ClientSecret rejected, or OrgCode \(nymble.orgCode) does not match them"
                )
            }
            throw failure(answer, endpoint: "login", scrubbing: [credentials.secret])
        }
        return try auth.grant(answer, endpoint: "login")
    }

    /// Renews with `refreshToken` (B2B; it rotates: the answer carries the next one).
    ///
    /// - Throws: ``NymbleAPIError`` — `.unauthorized` when the refresh token is refused (expired, used or
    ///   revoked: log in instead), and the login's other errors.
    public func refresh(_ refreshToken: AccessToken) async throws(NymbleAPIError) -> LoginGrant {
        guard let request = auth.refreshRequest(refreshToken) else {
            throw NymbleAPIError(.badRequest, api: auth.apiName, endpoint: "refresh", detail: "the API has no refresh")
        }
        let answer = try await exchange(request, endpoint: "refresh")
        guard auth.isSuccess(answer.status) else {
            throw failure(answer, endpoint: "refresh", scrubbing: [refreshToken.bearerValue])
        }
        return try auth.grant(answer, endpoint: "refresh")
    }

    /// Logs `token` out where the API offers it (AchieveApex's `DELETE /authentication`); returns false when
    /// it offers no logout.
    @discardableResult
    public func logout(_ token: AccessToken) async throws(NymbleAPIError) -> Bool {
        guard let request = auth.logoutRequest(token) else { return false }
        let answer = try await exchange(request, endpoint: "logout")
        guard (200...299).contains(answer.status) else {
            throw failure(answer, endpoint: "logout", scrubbing: [token.bearerValue])
        }
        return true
    }

    private func failure(_ answer: AuthAnswer, endpoint: String, scrubbing secrets: [String]) -> NymbleAPIError {
        auth.error(
            status: answer.status,
            retryAfter: answer.headers.first(name: "Retry-After"),
            body: answer.body,
            endpoint: endpoint,
            scrubbing: secrets
        )
    }

    /// The enrichment call for one pair (Nymble: `POST /api/auth/access`), authorised with `token`.
    ///
    /// - Throws: ``NymbleAPIError`` — `.unauthorized` on 401 (re-login), `.badRequest` on 400 (permanent),
    ///   `.forbidden` on 403, `.rateLimited` on 429 (with Retry-After), `.serverError` on 5xx, `.transport`,
    ///   `.undecodable`.
    public func access(
        organizationId: String,
        userId: String,
        token: AccessToken
    ) async throws(NymbleAPIError)
        -> CommerceContext
    {
        var body = ByteBuffer()
        var query = ""
        if callIsGet {
            let call = configuration.call
            query =
                "?" + Self.queryItem(call.organizationField, organizationId) + "&"
                + Self.queryItem(call.userField, userId)
        } else {
            body.writeBytes(bodyOpen)
            JSONText.write(organizationId, into: &body)
            body.writeBytes(bodyMiddle)
            JSONText.write(userId, into: &body)
            body.writeStaticString("}")
        }
        let answer: HTTP1Answer
        do {
            answer = try await accessHTTP.send(
                accessRequest.request(bearer: token.bearerValue, query: query, body: body.readableBytesView)
            )
        } catch {
            throw transportError(error, endpoint: "access")
        }
        if answer.status == 200 {
            if let context = CommerceContextDecoder.decode(answer.body, fields: answerFields) { return context }
            let fields = answerFields
            throw NymbleAPIError(
                .undecodable,
                api: auth.apiName,
                endpoint: "access",
                status: answer.status,
                detail: "the answer is not {\(fields.customerNumber), \(fields.priceTier), \(fields.currencyCode)}"
            )
        }
        throw auth.error(
            status: answer.status,
            retryAfter: answer.retryAfter,
            body: Array(answer.body.readableBytesView.prefix(4_096)),
            endpoint: "access",
            scrubbing: [token.bearerValue]
        )
    }

    /// `name=value`, both percent-encoded for a query string.
    private static func queryItem(_ name: String, _ value: String) -> String {
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "&=+?#")
        return (name.addingPercentEncoding(withAllowedCharacters: allowed) ?? "") + "="
            + (value.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")
    }

    /// A failed exchange (of either client) as the API error the runner acts on.
    private func transportError(_ error: any Error, endpoint: String) -> NymbleAPIError {
        switch error {
        case HTTP1Failure.tooLarge:
            return NymbleAPIError(
                .undecodable,
                api: auth.apiName,
                endpoint: endpoint,
                detail: "the answer is larger than \(configuration.maximumResponseBytes) bytes"
            )
        case HTTP1Failure.timedOut:
            return NymbleAPIError(.transport, api: auth.apiName, endpoint: endpoint, detail: "request timeout")
        case HTTP1Failure.closed:
            return NymbleAPIError(
                .transport,
                api: auth.apiName,
                endpoint: endpoint,
                detail: "connection closed by the server"
            )
        case HTTP1Failure.invalidAnswer:
            return NymbleAPIError(
                .transport,
                api: auth.apiName,
                endpoint: endpoint,
                detail: "the answer is not HTTP/1.1"
            )
        case HTTP1Failure.shutDown:
            return NymbleAPIError(.transport, api: auth.apiName, endpoint: endpoint, detail: "the client is shut down")
        case HTTP1Failure.noConnection:
            return NymbleAPIError(
                .transport,
                api: auth.apiName,
                endpoint: endpoint,
                detail: "no connection to \(hostAndPort) came free within the request timeout; nothing was sent"
            )
        case ChannelError.connectTimeout:
            return NymbleAPIError(.transport, api: auth.apiName, endpoint: endpoint, detail: "connect timeout")
        default:
            if let reason = Self.unreachable(error) {
                return NymbleAPIError(
                    .unreachable,
                    api: auth.apiName,
                    endpoint: endpoint,
                    detail: "cannot connect to \(hostAndPort): \(reason)"
                )
            }
            return NymbleAPIError(
                .transport,
                api: auth.apiName,
                endpoint: endpoint,
                detail: Self.describeTransport(error)
            )
        }
    }

    /// One request of the login conversation through AsyncHTTPClient, the answer collected up to the cap.
    private func exchange(_ request: AuthRequest, endpoint: String) async throws(NymbleAPIError) -> AuthAnswer {
        var outgoing = HTTPClientRequest(url: configuration.normalizedBaseURL + request.path)
        outgoing.method = request.method == .delete ? .DELETE : .POST
        outgoing.headers.add(name: "Accept", value: "application/json")
        if let bearer = request.bearer {
            let (header, scheme) = auth.authorization
            outgoing.headers.add(
                name: header,
                value: scheme.isEmpty ? bearer.bearerValue : "\(scheme) \(bearer.bearerValue)"
            )
        }
        if let body = request.body {
            outgoing.headers.add(name: "Content-Type", value: "application/json")
            outgoing.body = .bytes(ByteBuffer(string: body))
        }
        do {
            let response = try await loginHTTP.execute(
                outgoing,
                timeout: .init(configuration.requestTimeout),
                logger: Self.requestLogger
            )
            let buffer = try await response.body.collect(upTo: configuration.maximumResponseBytes)
            return AuthAnswer(
                status: Int(response.status.code),
                headers: response.headers,
                body: Array(buffer.readableBytesView)
            )
        } catch let error as NIOTooManyBytesError {
            _ = error
            throw NymbleAPIError(
                .undecodable,
                api: auth.apiName,
                endpoint: endpoint,
                detail: "the answer is larger than \(configuration.maximumResponseBytes) bytes"
            )
        } catch {
            throw transportError(error, endpoint: endpoint)
        }
    }

    /// `host:port` of the API, for messages.
    private var hostAndPort: String {
        guard let url = URLComponents(string: configuration.baseURL), let host = url.host else {
            return configuration.baseURL
        }
        let port = url.port ?? (url.scheme == "http" ? 80 : 443)
        return "\(host):\(port)"
    }

    /// Why a connection could not be opened at all, when that is what failed: refused, unknown host,
    /// unreachable network. nil for anything that may have reached the API.
    static func unreachable(_ error: any Error) -> String? {
        switch error {
        case let connection as NIOConnectionError:
            if connection.dnsAError != nil || connection.dnsAAAAError != nil { return "host not found" }
            return connection.connectionErrors.lazy.compactMap { unreachable($0.error) }.first
                ?? (connection.connectionErrors.isEmpty ? nil : "could not connect")
        case let io as IOError:
            switch io.errnoCode {
            case ECONNREFUSED: return "connection refused"
            case EHOSTUNREACH: return "host unreachable"
            case ENETUNREACH: return "network unreachable"
            default: return nil
            }
        default:
            return nil
        }
    }

    /// A short, secret-free name for a transport failure (AsyncHTTPClient and NIO errors carry no payload).
    static func describeTransport(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connect timeout"
            case .readTimeout: return "read timeout"
            case .deadlineExceeded: return "request timeout"
            case .remoteConnectionClosed: return "connection closed by the server"
            case .cancelled: return "cancelled"
            default: return "HTTP client error: \(error)"
            }
        }
        if error is CancellationError { return "cancelled" }
        return "\(type(of: error)): \(error)"
    }
}

/// Minimal JSON string quoting, for request bodies (faster than JSONEncoder for two fields) and log lines.
public enum JSONText {
    /// Writes `text` as a JSON string literal into `buffer`: its bytes as they are when nothing needs
    /// escaping (the usual id), else through ``quoted(_:)``.
    public static func write(_ text: String, into buffer: inout ByteBuffer) {
        var plain = true
        for byte in text.utf8 where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
            plain = false
            break
        }
        guard plain else {
            buffer.writeString(quoted(text))
            return
        }
        buffer.writeInteger(UInt8(ascii: "\""))
        buffer.writeString(text)
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    /// `text` as a JSON string literal, quotes included.
    public static func quoted(_ text: String) -> String {
        var result = "\""
        result.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case let s where s.value < 0x20:
                let hex = String(s.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        result += "\""
        return result
    }
}
