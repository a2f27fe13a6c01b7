import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NymbleAPI
import ServiceLifecycle
import Synchronization

/// Serves a responder over HTTP/1.1 as Hummingbird's `Application` does, except for the `Date` header: each
/// answer states the second it is sent.
///
/// `Application` takes `Date` from a cache refreshed once a second, so it can lag the real time by up to a
/// second more than the header's own truncation. With absolute expiries (B2B's `access_expires_at`,
/// AchieveApex's `exp`) a client computing `expiry - Date` would then overestimate the lifetime it has left.
/// Here `expiry - Date` never exceeds the lifetime: the header is taken after the expiry was set.
enum ExactDateServer {
    static func run<Responder: HTTPResponder>(
        responder: Responder,
        address: BindAddress,
        logger: Logger,
        onListening: @escaping @Sendable (Int) async -> Void
    ) async throws where Responder.Context == SimulatorContext {
        let dates = HTTPDateHeader()
        let server = try HTTPServerBuilder.http1().buildServer(
            configuration: ServerConfiguration(address: address, serverName: nil),
            eventLoopGroup: NIOSingletons.posixEventLoopGroup,
            logger: logger,
            responder: { request, writer, channel in
                let context = SimulatorContext(source: .init(channel: channel, logger: logger))
                var response: Response
                do {
                    response = try await responder.respond(to: request, context: context)
                } catch {
                    // As Application: an error no route turned into an answer (a dropped connection) is a 500.
                    response = Response(status: .internalServerError)
                }
                response.headers[.date] = dates.now()
                try await writer.write(response: response.head, body: response.body)
            },
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) }
        )
        let group = ServiceGroup(
            configuration: .init(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
    }
}

/// The current time as an HTTP date (`Tue, 24 Nov 2026 08:00:02 GMT`), formatted once per second.
private final class HTTPDateHeader: Sendable {
    private let cache = Mutex<(second: Int, text: String)>((-1, ""))

    func now() -> String {
        let second = Int(Date().timeIntervalSince1970.rounded(.down))
        if let text = cache.withLock({ $0.second == second ? $0.text : nil }) { return text }
        let text = RetryAfter.format(Date(timeIntervalSince1970: Double(second)))
        cache.withLock { if $0.second < second { $0 = (second, text) } }
        return text
    }
}
