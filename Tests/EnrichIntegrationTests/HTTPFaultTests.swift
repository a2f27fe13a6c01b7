import EnrichCore
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NymbleAPI
import Synchronization
import Testing

/// A TCP server on loopback that answers every request it reads (one `POST` each) with the bytes a test
/// chose: a misbehaving API as the client meets it on the wire, which the simulator (a correct HTTP
/// server) cannot play.
private final class FaultServer: Sendable {
    enum Reply: Sendable {
        /// These bytes, then the connection stays open.
        case bytes(String)
        /// These bytes, then the connection is closed.
        case bytesThenClose(String)
        /// Nothing at all.
        case silence
        /// These bytes to a connection's first request, nothing to the others.
        case firstOnly(String)
        /// These bytes in pieces of this many bytes, each written and flushed a millisecond after the last,
        /// so that the client reads them one by one.
        case inPieces(String, size: Int)
    }

    let port: Int
    private let counts: Counts

    var connections: Int { counts.value.withLock { $0.connections } }
    var requests: Int { counts.value.withLock { $0.requests } }

    private init(port: Int, counts: Counts) {
        self.port = port
        self.counts = counts
    }

    /// Runs `body` with a server answering `reply`, and its base URL; the server is closed afterwards. With
    /// `tls`, the server speaks TLS with that context and the URL is `https://localhost:port`.
    static func withRunning<T>(
        _ reply: Reply,
        tls: NIOSSLContext? = nil,
        _ body: (FaultServer, String) async throws -> T
    ) async throws -> T {
        let counts = Counts()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                counts.value.withLock { $0.connections += 1 }
                return child.eventLoop.makeCompletedFuture {
                    if let tls { try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try child.pipeline.syncOperations.addHandler(ReplyHandler(reply: reply, counts: counts))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let server = FaultServer(port: channel.localAddress?.port ?? 0, counts: counts)
        do {
            let result = try await body(
                server,
                tls == nil ? "http://127.0.0.1:\(server.port)" : "https://localhost:\(server.port)"
            )
            try? await channel.close()
            return result
        } catch {
            try? await channel.close()
            throw error
        }
    }
}

private final class Counts: Sendable {
    let value = Mutex((connections: 0, requests: 0))
}

private final class ReplyHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let reply: FaultServer.Reply
    private let counts: Counts
    private var received = ""
    private var answered = 0

    init(reply: FaultServer.Reply, counts: Counts) {
        self.reply = reply
        self.counts = counts
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += String(buffer: unwrapInboundIn(data))
        // A request is whole once its head and Content-Length bytes of body are here.
        while let headEnd = received.range(of: "\r\n\r\n") {
            let head = received[..<headEnd.lowerBound].lowercased()
            let length =
                head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            let bodyStart = received.utf8.distance(from: received.startIndex, to: headEnd.upperBound)
            guard received.utf8.count >= bodyStart + length else { return }
            received = String(received.utf8.dropFirst(bodyStart + length)) ?? ""
            counts.value.withLock { $0.requests += 1 }
            switch reply {
            case .bytes(let text):
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
            case .bytesThenClose(let text):
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).assumeIsolated().whenComplete { _ in
                    bound.value.close(promise: nil)
                }
            case .silence:
                break
            case .firstOnly(let text):
                if answered == 0 { context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil) }
            case .inPieces(let text, let size):
                let bytes = Array(text.utf8)
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                for (index, start) in stride(from: 0, to: bytes.count, by: size).enumerated() {
                    let piece = ByteBuffer(bytes: bytes[start..<min(bytes.count, start + size)])
                    context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(index))) {
                        bound.value.writeAndFlush(NIOAny(piece), promise: nil)
                    }
                }
            }
            answered += 1
        }
    }
}

private let goodBody = #"{"CustomerNumber":"C-1","PriceTier":"Gold","CurrencyCode":null}"#

private func answer(_ status: String, body: String, headers: String = "") -> String {
    "HTTP/1.1 \(status)\r\nContent-Type: application/json\r\n\(headers)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
}

/// One `access` call through the real client; the error it threw, or nil.
private func call(
    _ baseURL: String,
    requestTimeout: Duration = .seconds(5),
    times: Int = 1,
    tls: TLSConfiguration = .makeClientConfiguration()
) async throws -> (contexts: [CommerceContext], error: NymbleAPIError?) {
    try await NymbleClient.withClient(
        configuration: .init(
            baseURL: baseURL,
            connectTimeout: .seconds(2),
            requestTimeout: requestTimeout,
            tlsConfiguration: tls
        ),
        logger: quietLogger
    ) { client in
        var contexts: [CommerceContext] = []
        for index in 0..<times {
            do {
                contexts.append(
                    try await client.access(organizationId: "o1", userId: "u\(index)", token: AccessToken("tok-secret"))
                )
            } catch let error as NymbleAPIError {
                return (contexts, error)
            }
        }
        return (contexts, nil)
    }
}

/// `callers` concurrent calls through one client: how many were answered, how many failed in transport.
private func concurrentCalls(
    _ baseURL: String,
    callers: Int,
    requestTimeout: Duration
) async throws -> (ok: Int, transport: Int) {
    try await NymbleClient.withClient(
        configuration: .init(baseURL: baseURL, maximumConnections: callers, requestTimeout: requestTimeout),
        logger: quietLogger
    ) { client in
        await withTaskGroup(of: NymbleAPIError.Code?.self) { group in
            for index in 0..<callers {
                group.addTask {
                    do {
                        _ = try await client.access(organizationId: "o", userId: "u\(index)", token: AccessToken("t"))
                        return nil
                    } catch let error as NymbleAPIError {
                        return error.code
                    } catch {
                        return .unexpectedStatus
                    }
                }
            }
            var counts = (ok: 0, transport: 0)
            for await code in group {
                if code == nil { counts.ok += 1 } else if code == .transport { counts.transport += 1 }
            }
            return counts
        }
    }
}

@Suite("The hot-path HTTP client against a misbehaving server over loopback", .timeLimit(.minutes(2)))
struct HTTPFaultTests {
    @Test("keep-alive: consecutive calls share one connection; nulls stay null")
    func keepAlive() async throws {
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: goodBody))) { server, url in
            let (contexts, error) = try await call(url, times: 5)
            #expect(error == nil)
            #expect(contexts.count == 5)
            #expect(contexts.first == CommerceContext(customerNumber: "C-1", priceTier: "Gold", currencyCode: nil))
            #expect(server.requests == 5 && server.connections == 1, "\(server.requests) on \(server.connections)")
        }
    }

    @Test("a connection idle for longer than the idle timeout is closed, not reused")
    func idleTimeout() async throws {
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: goodBody))) { server, url in
            try await NymbleClient.withClient(
                configuration: .init(baseURL: url, idleTimeout: .milliseconds(200)),
                logger: quietLogger
            ) { client in
                for index in 0..<4 {
                    _ = try await client.access(organizationId: "o", userId: "u\(index)", token: AccessToken("t"))
                    if index == 1 { try await Task.sleep(for: .milliseconds(400)) }
                }
            }
            #expect(server.requests == 4 && server.connections == 2, "\(server.connections) connections")
        }
    }

    @Test("an answer with Connection: close is read whole and the next call opens a new connection")
    func connectionClose() async throws {
        let reply = answer("200 OK", body: goodBody, headers: "Connection: close\r\n")
        try await FaultServer.withRunning(.bytesThenClose(reply)) { server, url in
            let (contexts, error) = try await call(url, times: 3)
            #expect(error == nil && contexts.count == 3)
            #expect(server.connections == 3)
        }
    }

    @Test("a chunked answer is decoded like a sized one")
    func chunked() async throws {
        let reply =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n"
            + String(goodBody.prefix(16)) + "\r\n"
            + String(goodBody.utf8.count - 16, radix: 16) + "\r\n" + String(goodBody.dropFirst(16)) + "\r\n0\r\n\r\n"
        try await FaultServer.withRunning(.bytes(reply)) { _, url in
            let (contexts, error) = try await call(url, times: 2)
            #expect(error == nil && contexts.count == 2)
        }
    }

    @Test("an answer without a length is read to the close; an interim 100 Continue before an answer is skipped")
    func untilCloseAndInterim() async throws {
        let unsized = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n\(goodBody)"
        try await FaultServer.withRunning(.bytesThenClose(unsized)) { server, url in
            let (contexts, error) = try await call(url, times: 2)
            #expect(error == nil && contexts.count == 2, "\(String(describing: error))")
            #expect(server.connections == 2)
        }
        let interim = "HTTP/1.1 100 Continue\r\n\r\n" + answer("200 OK", body: goodBody)
        try await FaultServer.withRunning(.bytes(interim)) { server, url in
            let (contexts, error) = try await call(url, times: 2)
            #expect(error == nil && contexts.count == 2, "\(String(describing: error))")
            #expect(server.connections == 1)
        }
    }

    @Test("bytes nobody asked for after an answer: the answer is used, its connection is not lent again")
    func bytesAfterAnswer() async throws {
        let reply = answer("200 OK", body: goodBody) + "HTTP/1.1 200 OK\r\n"
        try await FaultServer.withRunning(.bytes(reply)) { server, url in
            let (contexts, error) = try await call(url, times: 2)
            #expect(error == nil && contexts.count == 2, "\(String(describing: error))")
            #expect(server.connections == 2)
        }
    }

    @Test(
        "an answer arriving a few bytes at a time is read whole, sized or chunked, on one kept-alive connection",
        arguments: [1, 3, 10]
    )
    func answerInPieces(size: Int) async throws {
        let chunked =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10;x=1\r\n" + String(goodBody.prefix(16)) + "\r\n"
            + String(goodBody.utf8.count - 16, radix: 16) + "\r\n" + String(goodBody.dropFirst(16))
            + "\r\n0\r\nX-Trailer: t\r\n\r\n"
        for reply in [answer("200 OK", body: goodBody, headers: "Retry-After: 3\r\n"), chunked] {
            try await FaultServer.withRunning(.inPieces(reply, size: size)) { server, url in
                let (contexts, error) = try await call(url, times: 2)
                #expect(error == nil && contexts.count == 2, "\(String(describing: error))")
                #expect(contexts.first?.customerNumber == "C-1" && contexts.first?.currencyCode == nil)
                #expect(server.connections == 1)
            }
        }
    }

    @Test("a server that closes a kept-alive connection after answering: the next call opens a new one")
    func closedWhileIdle() async throws {
        try await FaultServer.withRunning(.bytesThenClose(answer("200 OK", body: goodBody))) { server, url in
            try await NymbleClient.withClient(configuration: .init(baseURL: url), logger: quietLogger) { client in
                for index in 0..<3 {
                    _ = try await client.access(organizationId: "o", userId: "u\(index)", token: AccessToken("t"))
                    try await Task.sleep(for: .milliseconds(100))  // the close reaches the client while idle
                }
            }
            #expect(server.connections == 3)
        }
    }

    @Test("a garbage body with 200 is a typed undecodable error")
    func garbageBody() async throws {
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: "<html>not json</html>"))) { _, url in
            let error = try await call(url).error
            #expect(error?.code == .undecodable, "\(String(describing: error))")
        }
    }

    @Test("an answer over 64 KiB is rejected as undecodable, not buffered")
    func oversized() async throws {
        let body = "{\"CustomerNumber\":\"" + String(repeating: "x", count: 70_000) + "\"}"
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: body))) { _, url in
            let error = try await call(url).error
            #expect(error?.code == .undecodable)
            #expect(error?.description.contains("larger than 65536 bytes") == true, "\(String(describing: error))")
        }
    }

    @Test("bytes that are not HTTP are a transient transport error")
    func notHTTP() async throws {
        try await FaultServer.withRunning(.bytes("SSH-2.0-OpenSSH_9.2\r\n\r\n")) { _, url in
            let error = try await call(url).error
            #expect(error?.code == .transport && error?.isTransient == true, "\(String(describing: error))")
        }
    }

    @Test("a connection closed halfway through the body is a transient transport error")
    func closedMidBody() async throws {
        let partial = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Customer"
        try await FaultServer.withRunning(.bytesThenClose(partial)) { _, url in
            let error = try await call(url).error
            #expect(error?.code == .transport, "\(String(describing: error))")
            #expect(error?.description.contains("closed") == true, "\(String(describing: error))")
        }
    }

    @Test("a server that never answers: the request timeout ends the call")
    func timeout() async throws {
        try await FaultServer.withRunning(.silence) { _, url in
            let started = ContinuousClock.now
            let error = try await call(url, requestTimeout: .milliseconds(500)).error
            let elapsed = started.duration(to: .now)
            #expect(error?.code == .transport && error?.description.contains("request timeout") == true)
            #expect(elapsed < .seconds(3), "\(elapsed)")
        }
    }

    @Test(
        "the request timeout counts from each call's own start on a kept-alive connection",
        arguments: [600, 1_200]
    )
    func timeoutPerCall(pauseMilliseconds: Int) async throws {
        // After 600 ms, the connection's timer (armed for the first call's deadline) fires while the second
        // call waits: it must wait on to the second call's own deadline, not end it early. After 1.2 s, it
        // fired while the connection was idle: the second call must get a timer of its own.
        try await FaultServer.withRunning(.firstOnly(answer("200 OK", body: goodBody))) { server, url in
            try await NymbleClient.withClient(
                configuration: .init(baseURL: url, requestTimeout: .seconds(1)),
                logger: quietLogger
            ) { client in
                _ = try await client.access(organizationId: "o", userId: "u1", token: AccessToken("t"))
                try await Task.sleep(for: .milliseconds(pauseMilliseconds))
                let started = ContinuousClock.now
                await #expect(throws: NymbleAPIError.self) {
                    _ = try await client.access(organizationId: "o", userId: "u2", token: AccessToken("t"))
                }
                let waited = started.duration(to: .now)
                #expect(waited >= .milliseconds(950) && waited < .seconds(3), "\(waited)")
            }
            #expect(server.requests == 2 && server.connections == 1, "\(server.requests) on \(server.connections)")
        }
    }

    @Test("a call cancelled while waiting for the answer returns at once")
    func cancelled() async throws {
        try await FaultServer.withRunning(.silence) { _, url in
            let started = ContinuousClock.now
            let task = Task { try await call(url, requestTimeout: .seconds(60)).error }
            try await Task.sleep(for: .milliseconds(300))
            task.cancel()
            let error = try await task.value
            #expect(error?.code == .transport, "\(String(describing: error))")
            #expect(started.duration(to: .now) < .seconds(5))
        }
    }

    @Test("429 carries its Retry-After; 5xx bodies are quoted without the token")
    func statusesAndHeaders() async throws {
        let limited = answer("429 Too Many Requests", body: "", headers: "Retry-After: 7\r\n")
        try await FaultServer.withRunning(.bytes(limited)) { _, url in
            let error = try await call(url).error
            #expect(error?.code == .rateLimited && error?.retryAfter == .seconds(7), "\(String(describing: error))")
        }
        let failing = answer("503 Service Unavailable", body: "backend down for tok-secret")
        try await FaultServer.withRunning(.bytes(failing)) { _, url in
            let error = try await call(url).error
            #expect(error?.code == .serverError)
            #expect(error?.description.contains("backend down") == true)
            #expect(error?.description.contains("tok-secret") == false, "\(String(describing: error))")
        }
    }

    @Test("nothing listening: unreachable at once, naming host and port")
    func refused() async throws {
        let port = try await FaultServer.withRunning(.silence) { server, _ in server.port }
        let started = ContinuousClock.now
        let error = try await call("http://127.0.0.1:\(port)").error
        #expect(error?.code == .unreachable, "\(String(describing: error))")
        #expect(error?.description.contains("127.0.0.1:\(port)") == true)
        #expect(started.duration(to: .now) < .seconds(2))
    }

    @Test("https: the answer over TLS on one kept-alive connection; an untrusted certificate is refused")
    func tls() async throws {
        let (certificate, key) = try selfSignedCertificate()
        let server = try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: [.certificate(certificate)],
                privateKey: .privateKey(key)
            )
        )
        var trusting = TLSConfiguration.makeClientConfiguration()
        trusting.trustRoots = .certificates([certificate])
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: goodBody)), tls: server) { server, url in
            let (contexts, error) = try await call(url, times: 3, tls: trusting)
            #expect(error == nil && contexts.count == 3, "\(String(describing: error))")
            #expect(server.connections == 1)
            let refused = try await call(url).error  // the system's trust roots do not know this certificate
            #expect(refused?.code == .transport, "\(String(describing: refused))")
            #expect(contexts.count == 3 && server.requests == 3, "nothing was sent over the refused connection")
        }
    }

    @Test("100 callers at once share the pool: every call answered, no more connections than callers")
    func manyCallers() async throws {
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: goodBody))) { server, url in
            // More callers than connections opened at once (32), without loading the rest of the suite.
            let answered = try await concurrentCalls(url, callers: 100, requestTimeout: .seconds(20))
            #expect(answered.ok == 100, "\(answered)")
            #expect(server.connections <= 100 && server.requests == 100, "\(server.connections)")
        }
    }

    @Test("callers waiting for a connection to a silent server give up at the request timeout, none hangs")
    func waitersTimeOut() async throws {
        try await FaultServer.withRunning(.silence) { _, url in
            let started = ContinuousClock.now
            let answered = try await concurrentCalls(url, callers: 48, requestTimeout: .milliseconds(700))
            #expect(answered.ok == 0 && answered.transport == 48, "\(answered)")
            #expect(started.duration(to: .now) < .seconds(5), "\(started.duration(to: .now))")
        }
    }

    @Test("base URLs: origin, port, path prefix; anything else refused")
    func baseURLs() async throws {
        await #expect(throws: NymbleAPIError.self) { _ = try await call("ftp://example.com") }
        try await FaultServer.withRunning(.bytes(answer("200 OK", body: goodBody))) { server, url in
            let (contexts, error) = try await call(url + "/prefix/")
            #expect(error == nil && contexts.count == 1 && server.requests == 1)
        }
    }
}

/// A throwaway self-signed certificate for `localhost` and its key, made by the openssl command line.
private func selfSignedCertificate() throws -> (NIOSSLCertificate, NIOSSLPrivateKey) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("enrich-tls-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let certificate = directory.appendingPathComponent("cert.pem").path
    let key = directory.appendingPathComponent("key.pem").path
    let openssl = Process()
    openssl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    openssl.arguments = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "1",
        "-keyout", key, "-out", certificate,
    ]
    openssl.standardOutput = FileHandle.nullDevice
    openssl.standardError = FileHandle.nullDevice
    try openssl.run()
    openssl.waitUntilExit()
    try #require(openssl.terminationStatus == 0, "openssl (Debian package openssl) made no certificate")
    return (try NIOSSLCertificate(file: certificate, format: .pem), try NIOSSLPrivateKey(file: key, format: .pem))
}
