import EnrichQueue
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// The status page's routes: `GET /` (the page), `GET /status.json` (the same figures for scripts). Read-only;
/// each request reads the database once, bounded by its statement timeout.
public enum StatusPageRoutes {
    public static func add(to router: Router<BasicRequestContext>, database: Database, refreshSeconds: Int = 5) {
        router.get("/") { _, _ in
            let page = try await StatusPage.read(database, refreshSeconds: refreshSeconds)
            return Response(
                status: .ok,
                headers: [
                    .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                    .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
                ],
                body: .init(byteBuffer: ByteBuffer(string: page.html()))
            )
        }
        router.get("/status.json") { _, _ in
            let page = try await StatusPage.read(database, refreshSeconds: refreshSeconds)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            let body = try encoder.encode(StatusDocument(status: page.report, failures: page.failures))
            return Response(
                status: .ok,
                headers: [.contentType: "application/json", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(bytes: body))
            )
        }
    }

    struct StatusDocument: Encodable {
        var status: StatusReport
        var failures: FailureReport
    }
}

/// `enrich dashboard`: the status page on its own HTTP server (127.0.0.1 unless told otherwise). A
/// `Service`: SIGTERM/SIGINT stop it through its `ServiceGroup`.
public struct StatusServer: Service {
    public let database: Database
    public let host: String
    public let port: Int
    public let refreshSeconds: Int
    private let logger: Logger
    private let onListening: @Sendable (Int) async -> Void

    public init(
        database: Database,
        host: String,
        port: Int,
        refreshSeconds: Int = 5,
        logger: Logger,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) {
        self.database = database
        self.host = host
        self.port = port
        self.refreshSeconds = refreshSeconds
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        let router = Router()
        StatusPageRoutes.add(to: router, database: database, refreshSeconds: refreshSeconds)
        let (host, logger, onListening) = (host, logger, onListening)
        let application = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.notice("serving the status page", metadata: ["url": "http://\(host):\(port)/"])
                await onListening(port)
            },
            logger: logger
        )
        try await application.runService()
    }
}
