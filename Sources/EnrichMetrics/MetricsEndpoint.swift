import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle

/// Serves `GET /metrics` in the Prometheus text format from one collector registry (`--metrics-port`), and
/// any routes `pages` adds (the status page).
///
/// A `Service`: it runs beside the worker in the same `ServiceGroup` and stops with it.
public struct MetricsEndpoint: Service {
    public let registry: PrometheusCollectorRegistry
    public let host: String
    public let port: Int
    private let logger: Logger
    private let onListening: @Sendable (Int) async -> Void
    private let pages: (@Sendable (Router<BasicRequestContext>) -> Void)?

    /// - Parameter pages: adds further routes to the same server.
    /// - Parameter onListening: receives the bound port (useful with port 0).
    public init(
        registry: PrometheusCollectorRegistry,
        host: String,
        port: Int,
        logger: Logger,
        pages: (@Sendable (Router<BasicRequestContext>) -> Void)? = nil,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) {
        self.pages = pages
        self.registry = registry
        self.host = host
        self.port = port
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        let router = Router()
        let registry = self.registry
        router.get("/metrics") { _, _ in
            var buffer: [UInt8] = []
            buffer.reserveCapacity(8 * 1024)
            registry.emit(into: &buffer)
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: buffer))
            )
        }
        pages?(router)
        let (host, logger, onListening) = (host, logger, onListening)
        let application = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("serving metrics", metadata: ["url": "http://\(host):\(port)/metrics"])
                await onListening(port)
            },
            logger: logger
        )
        try await application.runService()
    }
}
