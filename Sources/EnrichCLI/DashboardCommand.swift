import ArgumentParser
import EnrichQueue
import EnrichStatus
import ServiceLifecycle

/// `enrich dashboard`: the read-only status page on its own HTTP server.
struct DashboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Serve the read-only status page: queue, runs, throughput and 429s over time, failures, fleet.",
        discussion: """
            Binds 127.0.0.1 by default. Any other --host exposes the page, which shows pairs and error texts: \
            put a reverse proxy with authentication in front of it (README, "The status page"). The same page \
            is served by `enrich run --metrics-port` at /. Stop with Ctrl-C or SIGTERM.
            """
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: ArgumentHelp("Port to serve on (0: any free port, logged).", valueName: "port"))
    var port = 9470

    @Option(help: ArgumentHelp("Address to bind (default 127.0.0.1: this machine only).", valueName: "address"))
    var host = "127.0.0.1"

    @Option(help: ArgumentHelp("Seconds between the page's own refreshes (1-3600).", valueName: "seconds"))
    var refresh = 5

    func validate() throws {
        if !(0...65_535).contains(port) { throw ValidationError("--port must be 0 to 65535") }
        if !(1...3600).contains(refresh) { throw ValidationError("--refresh must be 1 to 3600 seconds") }
        if host.isEmpty { throw ValidationError("--host is empty") }
    }

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let (host, port, refresh) = (self.host, self.port, self.refresh)
            try await Database.withDatabase(try database.configuration(), logger: logger) { db in
                let server = StatusServer(database: db, host: host, port: port, refreshSeconds: refresh, logger: logger)
                let group = ServiceGroup(
                    configuration: .init(
                        services: [.init(service: server)],
                        gracefulShutdownSignals: [.sigterm, .sigint],
                        logger: logger
                    )
                )
                try await group.run()
            }
            return EnrichExitCode.success
        }
    }
}
