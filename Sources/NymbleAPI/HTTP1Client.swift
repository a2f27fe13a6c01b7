import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// An answer read whole: its status, the one header the client acts on, and the body (at most the cap).
struct HTTP1Answer: Sendable, Equatable {
    var status: Int
    var retryAfter: String?
    var body: ByteBuffer
    /// Whether the connection may carry the next request.
    var keepAlive: Bool
}

/// Why an exchange did not produce an answer.
enum HTTP1Failure: Error, Sendable, Equatable {
    /// The body grew past the client's cap; the connection was closed.
    case tooLarge
    /// No whole answer within the request timeout; the connection was closed.
    case timedOut
    /// The connection closed before the whole answer arrived.
    case closed
    /// The bytes received are not an HTTP/1.1 answer.
    case invalidAnswer
    /// The client was shut down.
    case shutDown
    /// No connection came free within the request timeout (nothing was sent).
    case noConnection
}

/// A lean HTTP/1.1 client for the hot path: keep-alive connections to one origin (TLS through NIOSSL for
/// `https`), each request one pre-encoded buffer and one write, the answer read by
/// ``HTTP1ResponseParser`` and collected whole up to a cap.
///
/// Why not AsyncHTTPClient for `/access` (it still does the rare login): per request it parses the URL,
/// builds and encodes a header list, runs its pool's state machine and streams the body through an async
/// sequence, hopping between the caller and the event loop several times; profiled, that was about half
/// of the runner's CPU per pair (BENCHMARKS.md, "Hot path"). Here a request is a buffer handed to the
/// connection's handler in one hop to its event loop, and the answer resumes the caller's continuation.
///
/// Requests are not retried once written: a connection that fails mid-exchange fails the call (the runner
/// retries the row with backoff), since `POST /access` may already have been served. A connection found
/// closed before anything was written is replaced, twice at most.
final class HTTP1Client: Sendable {
    struct Origin: Sendable {
        var host: String
        var port: Int
        var tls: Bool

        /// The `Host` header's value: the port only when it is not the scheme's default.
        var hostHeader: String {
            let name = host.contains(":") ? "[\(host)]" : host
            return port == (tls ? 443 : 80) ? name : "\(name):\(port)"
        }

        /// The origin of a base URL `http(s)://host[:port][/path]` and its path (empty or starting with `/`,
        /// without a trailing slash); nil when it is not one.
        static func parse(baseURL: String) -> (Origin, basePath: String)? {
            let tls: Bool
            let rest: Substring
            if baseURL.hasPrefix("https://") {
                (tls, rest) = (true, baseURL.dropFirst(8))
            } else if baseURL.hasPrefix("http://") {
                (tls, rest) = (false, baseURL.dropFirst(7))
            } else {
                return nil
            }
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[..<slash]
            var path = String(rest[slash...])
            while path.hasSuffix("/") { path.removeLast() }
            guard !path.contains("?"), !path.contains("#"), !path.contains(" ") else { return nil }
            var host = authority
            var port = tls ? 443 : 80
            if authority.hasPrefix("[") {  // an IPv6 literal
                guard let close = authority.firstIndex(of: "]") else { return nil }
                host = authority[authority.index(after: authority.startIndex)..<close]
                let after = authority[authority.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":"), let number = Int(after.dropFirst()) else { return nil }
                    port = number
                }
            } else if let colon = authority.lastIndex(of: ":") {
                guard let number = Int(authority[authority.index(after: colon)...]) else { return nil }
                host = authority[..<colon]
                port = number
            }
            guard !host.isEmpty, !host.contains("@"), (1...65535).contains(port) else { return nil }
            return (Origin(host: String(host), port: port, tls: tls), path)
        }
    }

    let origin: Origin
    private let group: any EventLoopGroup
    private let sslContext: NIOSSLContext?
    private let connectTimeout: TimeAmount
    private let requestTimeout: TimeAmount
    private let maximumResponseBytes: Int
    private let maximumIdle: Int
    /// How long a connection may sit idle and still be lent.
    private let maximumIdleTime: Duration
    private let pool = Mutex(Pool())

    /// Connections opened at once, at most: 512 callers connecting together overflowed a server's listen
    /// backlog (256 is common), and a dropped SYN is retried only after a second; callers beyond this wait
    /// for a connection another caller hands back or for a free connect slot.
    static let maximumConnecting = 32

    /// The pool's state, under one lock.
    private struct Pool {
        /// Connections that can carry a request, the most recently used last, with when they went idle.
        var idle: [(connection: Connection, since: ContinuousClock.Instant)] = []
        var shutDown = false
        var connecting = 0
        /// Callers waiting for a connection: resumed with one, or with nil to look again (a connect slot
        /// freed, a connection closed).
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Connection?, any Error>)] = []
        var nextWaiterID: UInt64 = 0

        /// The first waiter, to resume outside the lock.
        mutating func takeWaiter() -> CheckedContinuation<Connection?, any Error>? {
            waiters.isEmpty ? nil : waiters.removeFirst().continuation
        }
    }

    init(
        origin: Origin,
        tlsConfiguration: TLSConfiguration = .makeClientConfiguration(),
        connectTimeout: Duration,
        requestTimeout: Duration,
        maximumResponseBytes: Int,
        maximumIdle: Int,
        maximumIdleTime: Duration = .seconds(60),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) throws {
        self.origin = origin
        self.group = group
        self.sslContext = origin.tls ? try NIOSSLContext(configuration: tlsConfiguration) : nil
        self.connectTimeout = TimeAmount(connectTimeout)
        self.requestTimeout = TimeAmount(requestTimeout)
        self.maximumResponseBytes = maximumResponseBytes
        self.maximumIdle = max(1, maximumIdle)
        self.maximumIdleTime = maximumIdleTime
    }

    /// Sends `request` (a whole HTTP/1.1 request, see ``HTTP1RequestTemplate``) and reads the answer.
    ///
    /// - Throws: ``HTTP1Failure``, a connect error (`NIOConnectionError`, `ChannelError.connectTimeout`,
    ///   `IOError`), or `CancellationError` when the task was cancelled (the connection is closed).
    func send(_ request: ByteBuffer) async throws -> HTTP1Answer {
        var unsentTries = 0
        while true {
            do {
                return try await sendOnce(request)
            } catch let unsent as NotSent {
                unsentTries += 1
                if Task.isCancelled { throw CancellationError() }
                if unsentTries > 2 { throw unsent.reason }
            }
        }
    }

    /// One lease and one exchange; ``NotSent`` when the connection was closed before the request was written.
    private func sendOnce(_ request: ByteBuffer) async throws -> HTTP1Answer {
        let connection = try await lease()
        if Task.isCancelled {  // cancelled while connecting: send nothing the server might serve unread
            release(connection, reusable: true)
            throw CancellationError()
        }
        let channel = connection.channel
        let timeout = requestTimeout
        do {
            // The handler resumes the continuation exactly once: with the answer, or with why there is none
            // (timeout, closed connection, invalid bytes, cancellation closing the connection).
            let result = try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { (answer: UnsafeContinuation<HTTP1Answer, any Error>) in
                    channel.eventLoop.execute {
                        connection.handler.value.start(request, timeout: timeout, answer: answer)
                    }
                }
            } onCancel: {
                channel.close(promise: nil)
            }
            // A cancellation that came after the answer has begun closing the connection: do not lend it.
            release(connection, reusable: result.keepAlive && !Task.isCancelled)
            return result
        } catch {
            channel.close(promise: nil)
            if Task.isCancelled { throw CancellationError() }
            throw error
        }
    }

    /// The connection was closed before the request was written (idle in the pool, or as the call began):
    /// nothing reached the server, so another connection may carry the request.
    fileprivate struct NotSent: Error {
        /// What closed it: ``HTTP1Failure/closed``, or the error that did (a failed TLS handshake).
        var reason: any Error
    }

    /// Closes the idle connections and wakes the callers waiting for one; connections in use are closed when
    /// their exchange ends.
    func shutdown() {
        let (idle, waiters) = pool.withLock { pool in
            pool.shutDown = true
            defer {
                pool.idle = []
                pool.waiters = []
            }
            return (pool.idle.map(\.connection.channel), pool.waiters.map(\.continuation))
        }
        for channel in idle { channel.close(promise: nil) }
        for waiter in waiters { waiter.resume(throwing: HTTP1Failure.shutDown) }
    }

    /// An idle connection, a new one (at most ``maximumConnecting`` opening at once), or the first one
    /// handed back while waiting (at most the request timeout).
    private func lease() async throws -> Connection {
        let deadline = ContinuousClock.now.advanced(by: Duration.nanoseconds(requestTimeout.nanoseconds))
        while true {
            enum Next {
                case use(Connection)
                case connect
                case wait(UInt64)
            }
            let now = ContinuousClock.now
            var expired: [any Channel] = []
            defer { for channel in expired { channel.close(promise: nil) } }
            let next = try pool.withLock { pool -> Next in
                if pool.shutDown { throw HTTP1Failure.shutDown }
                // Connections idle for longer than ``maximumIdleTime`` are closed rather than lent: a server
                // closing one just as a request goes out would fail that call. The list is in the order the
                // connections went idle, so the expired ones are at its start.
                let stillFresh = pool.idle.firstIndex { $0.since.duration(to: now) <= maximumIdleTime }
                let expiredCount = stillFresh ?? pool.idle.count
                if expiredCount > 0 {
                    expired = pool.idle.prefix(expiredCount).map(\.connection.channel)
                    pool.idle.removeFirst(expiredCount)
                }
                while let entry = pool.idle.popLast() {
                    if entry.connection.channel.isActive { return .use(entry.connection) }
                }
                if pool.connecting < Self.maximumConnecting {
                    pool.connecting += 1
                    return .connect
                }
                pool.nextWaiterID += 1
                return .wait(pool.nextWaiterID)
            }
            switch next {
            case .use(let connection):
                return connection
            case .connect:
                defer {
                    // A connect slot is free again: the first waiter may take it.
                    let waiter = pool.withLock { pool in
                        pool.connecting -= 1
                        return pool.takeWaiter()
                    }
                    waiter?.resume(returning: nil)
                }
                return try await connect()
            case .wait(let id):
                if let connection = try await waitForConnection(id: id, until: deadline) { return connection }
            }
        }
    }

    /// Waits until a connection is handed over (returned), a slot frees (nil: look again), the deadline
    /// passes (``HTTP1Failure/timedOut``) or the task is cancelled.
    private func waitForConnection(
        id: UInt64,
        until deadline: ContinuousClock.Instant
    ) async throws
        -> Connection?
    {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { throw HTTP1Failure.noConnection }
        let timer = TimerBox()
        defer { timer.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                enum Listed {
                    case listed
                    case lookAgain
                    case failed(any Error)
                }
                // Decided under the same lock as the list, so that a connection returned or a connect slot
                // freed since the caller looked is not missed.
                let listed = pool.withLock { pool -> Listed in
                    if pool.shutDown { return .failed(HTTP1Failure.shutDown) }
                    if Task.isCancelled { return .failed(CancellationError()) }
                    if !pool.idle.isEmpty || pool.connecting < Self.maximumConnecting { return .lookAgain }
                    pool.waiters.append((id, continuation))
                    return .listed
                }
                switch listed {
                case .failed(let error):
                    continuation.resume(throwing: error)
                case .lookAgain:
                    continuation.resume(returning: nil)
                case .listed:
                    // Set once the waiter is listed, so that it always finds it (or finds it already resumed).
                    timer.set(
                        group.any().scheduleTask(in: TimeAmount(remaining)) { [self] in
                            removeWaiter(id)?.resume(throwing: HTTP1Failure.noConnection)
                        }
                    )
                }
            }
        } onCancel: { [self] in
            removeWaiter(id)?.resume(throwing: CancellationError())
        }
    }

    /// Takes waiter `id` off the list, if it is still there.
    private func removeWaiter(_ id: UInt64) -> CheckedContinuation<Connection?, any Error>? {
        pool.withLock { pool in
            guard let index = pool.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return pool.waiters.remove(at: index).continuation
        }
    }

    /// Hands a connection that can carry another request to the first waiter, or keeps it idle; closes it
    /// otherwise (and lets a waiter open a new one).
    private func release(_ connection: Connection, reusable: Bool) {
        enum Outcome {
            case handed(CheckedContinuation<Connection?, any Error>)
            case kept
            case close(CheckedContinuation<Connection?, any Error>?)
        }
        let active = reusable && connection.channel.isActive
        let outcome = pool.withLock { pool -> Outcome in
            guard active, !pool.shutDown else { return .close(pool.takeWaiter()) }
            if let waiter = pool.takeWaiter() { return .handed(waiter) }
            guard pool.idle.count < maximumIdle else { return .close(nil) }
            pool.idle.append((connection, ContinuousClock.now))
            return .kept
        }
        switch outcome {
        case .handed(let waiter):
            waiter.resume(returning: connection)
        case .kept:
            break
        case .close(let waiter):
            connection.channel.close(promise: nil)
            waiter?.resume(returning: nil)
        }
    }

    private func connect() async throws -> Connection {
        let sslContext = self.sslContext
        let serverHostname = origin.host.isIPAddress ? nil : origin.host
        let maximumResponseBytes = self.maximumResponseBytes
        return try await ClientBootstrap(group: group)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let sslContext {
                        try pipeline.addHandler(
                            NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname)
                        )
                    }
                    try pipeline.addHandler(HTTP1ExchangeHandler(maximumResponseBytes: maximumResponseBytes))
                }
            }
            .connect(host: origin.host, port: origin.port)
            .flatMapThrowing { channel in
                Connection(
                    channel: channel,
                    handler: NIOLoopBound(
                        try channel.pipeline.syncOperations.handler(type: HTTP1ExchangeHandler.self),
                        eventLoop: channel.eventLoop
                    )
                )
            }
            .get()
    }
}

/// A pooled connection: its channel, and its exchange handler (touched only on the channel's event loop).
private struct Connection: Sendable {
    let channel: any Channel
    let handler: NIOLoopBound<HTTP1ExchangeHandler>
}

/// A waiter's timer, set once it is listed and cancelled when the wait ends.
private final class TimerBox: Sendable {
    private let scheduled = Mutex<(task: Scheduled<Void>?, cancelled: Bool)>((nil, false))

    func set(_ task: Scheduled<Void>) {
        let cancelNow = scheduled.withLock { state in
            state.task = task
            return state.cancelled
        }
        if cancelNow { task.cancel() }
    }

    func cancel() {
        let task = scheduled.withLock { state in
            state.cancelled = true
            return state.task
        }
        task?.cancel()
    }
}

/// The bytes of requests to one path: everything but the bearer token and the body encoded once.
struct HTTP1RequestTemplate: Sendable {
    /// `METHOD /path`
    private let start: [UInt8]
    /// ` HTTP/1.1`, the fixed headers, and the authorisation header's name and scheme.
    private let rest: [UInt8]
    private let hasBody: Bool

    /// `method path` to `origin`, with a JSON body unless the method is GET, authorised by `header: scheme …`.
    init(
        method: String = "POST",
        path: String,
        origin: HTTP1Client.Origin,
        authorization: (header: String, scheme: String) = ("Authorization", "Bearer")
    ) {
        hasBody = method != "GET"
        start = Array("\(method) \(path)".utf8)
        rest = Array(
            (" HTTP/1.1\r\nHost: \(origin.hostHeader)\r\n" + (hasBody ? "Content-Type: application/json\r\n" : "")
                + "Accept: application/json\r\n\(authorization.header): "
                + (authorization.scheme.isEmpty ? "" : authorization.scheme + " ")).utf8
        )
    }

    /// The request with `bearer`, the path's `query` (with its `?`, or empty) and `body`, in one buffer.
    func request(bearer: String, query: String = "", body: some Collection<UInt8>) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(start.count + rest.count + query.utf8.count + bearer.utf8.count + body.count + 64)
        buffer.writeBytes(start)
        buffer.writeString(query)
        buffer.writeBytes(rest)
        buffer.writeString(bearer)
        if hasBody {
            buffer.writeStaticString("\r\nContent-Length: ")
            buffer.writeString(String(body.count))
            buffer.writeStaticString("\r\n\r\n")
            buffer.writeBytes(body)
        } else {
            buffer.writeStaticString("\r\n\r\n")
        }
        return buffer
    }
}

/// One exchange at a time on its connection: writes the request, reads the answer (``HTTP1ResponseParser``,
/// the body up to the cap), resumes the exchange's continuation exactly once (answer, timeout, closed
/// connection, invalid bytes). The client calls ``start(_:timeout:answer:)`` on the channel's event loop.
private final class HTTP1ExchangeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var parser: HTTP1ResponseParser
    /// Bytes of an answer's unfinished line, kept until the next read completes it.
    private var unread = ByteBuffer()
    /// Set while the handler is in the pipeline.
    private var context: ChannelHandlerContext?
    /// The exchange in progress: where its answer goes.
    private var pending: UnsafeContinuation<HTTP1Answer, any Error>?
    /// The error that ended the connection while no exchange was in progress (a failed TLS handshake), for
    /// the call that finds it closed.
    private var closedBy: (any Error)?
    /// When the exchange in progress times out.
    private var deadline = NIODeadline.distantFuture
    /// The connection's one timer, armed for a deadline at or before the current one. Exchanges take
    /// milliseconds and the timeout is seconds, so rather than scheduling and cancelling a timer per request
    /// (NIO keeps them in a heap; that was 4% of the runner's CPU per pair), the timer stays armed and, when it
    /// fires early (its exchange ended, another began), is armed again for the current deadline.
    private var timer: (task: Scheduled<Void>, deadline: NIODeadline)?
    /// Counts the timers armed: a timer already due when it was cancelled may still run (NIO runs due timers
    /// in batches), and then it must do nothing.
    private var timerGeneration: UInt64 = 0

    init(maximumResponseBytes: Int) { parser = HTTP1ResponseParser(maximumBodyBytes: maximumResponseBytes) }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Writes `request` and resumes `answer` once: with the answer, or with why there is none. A write that
    /// fails closes the connection, which ends the exchange.
    func start(_ request: ByteBuffer, timeout: TimeAmount, answer: UnsafeContinuation<HTTP1Answer, any Error>) {
        guard let context, context.channel.isActive else {
            // Closed while idle in the pool, or as the call began: nothing was written.
            answer.resume(throwing: HTTP1Client.NotSent(reason: closedBy ?? HTTP1Failure.closed))
            return
        }
        guard pending == nil else {
            answer.resume(throwing: HTTP1Failure.invalidAnswer)  // never: the pool leases a connection to one caller
            return
        }
        pending = answer
        deadline = .now() + timeout
        if let timer, timer.deadline > deadline { disarmTimer() }  // never with one timeout per client; kept exact
        if timer == nil { armTimer(context: context) }
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard pending != nil else {
            // Bytes nobody asked for (or after a failed exchange): they cannot be told from the next answer.
            context.close(promise: nil)
            return
        }
        // Read in place when nothing is carried over (the usual answer, whole in one read); what is left
        // unread ends up in `unread` either way.
        let answer: HTTP1Answer?
        do {
            if unread.readableBytes == 0 {
                answer = try parser.read(&bytes)
                if bytes.readableBytes > 0 { unread.writeBuffer(&bytes) }
            } else {
                unread.writeBuffer(&bytes)
                answer = try parser.read(&unread)
            }
        } catch {
            fail(error == .tooLarge ? HTTP1Failure.tooLarge : HTTP1Failure.invalidAnswer, context: context)
            return
        }
        guard var answer else {
            unread.discardReadBytes()  // keep only the unfinished line, not the body already read
            return
        }
        // Bytes after the answer were not asked for: the connection is not lent again.
        let extra = unread.readableBytes > 0
        if extra { answer.keepAlive = false }
        unread.clear()
        takePending()?.resume(returning: answer)
        if extra { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A body that ends where the connection does (not kept alive: read until close).
        if pending != nil, let answer = parser.readAtClose() { takePending()?.resume(returning: answer) }
        fail(HTTP1Failure.closed, context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if pending == nil, closedBy == nil { closedBy = error }
        switch error {
        case NIOSSLError.uncleanShutdown:
            fail(HTTP1Failure.closed, context: context)  // closed mid-answer
        default: fail(error, context: context)
        }
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        fail(HTTP1Failure.closed, context: context, close: false)
        disarmTimer()
        self.context = nil
    }

    /// Cancels the timer; one already due (NIO runs due timers in batches) finds its generation stale and
    /// does nothing.
    private func disarmTimer() {
        timer?.task.cancel()
        timer = nil
        timerGeneration &+= 1
    }

    /// Schedules the timer for the current deadline; when it fires, the exchange in progress times out if its
    /// deadline has passed, else the timer is armed again (an exchange in progress) or left unarmed (none).
    private func armTimer(context: ChannelHandlerContext) {
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timerGeneration &+= 1
        let generation = timerGeneration
        // The context holds the handler, so this closure does too until it runs or is cancelled: at the
        // latest at the exchange's deadline, or when the handler is removed (the connection closed).
        let task = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            guard generation == self.timerGeneration else { return }
            self.timer = nil
            guard self.pending != nil else { return }
            if self.deadline <= .now() {
                self.fail(HTTP1Failure.timedOut, context: bound.value)
            } else {
                self.armTimer(context: bound.value)
            }
        }
        timer = (task, deadline)
    }

    /// Fails the exchange in progress (if any) and closes the connection: what is left of its answer
    /// cannot be told from the next one's.
    private func fail(_ error: any Error, context: ChannelHandlerContext, close: Bool = true) {
        guard let answerTo = takePending() else { return }
        answerTo.resume(throwing: error)
        if close { context.close(promise: nil) }
    }

    /// Ends the exchange in progress, if any: its continuation, to resume once.
    private func takePending() -> UnsafeContinuation<HTTP1Answer, any Error>? {
        defer {
            pending = nil
            deadline = .distantFuture
        }
        return pending
    }
}

@available(*, unavailable)
extension HTTP1ExchangeHandler: Sendable {}

extension String {
    /// Whether this is an IPv4 or IPv6 literal (no SNI for those).
    fileprivate var isIPAddress: Bool {
        (try? SocketAddress(ipAddress: self, port: 0)) != nil
    }
}
