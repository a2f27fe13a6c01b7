import ArgumentParser
import EnrichSettings
import Foundation
import Logging
import NymbleSimulator
import ServiceLifecycle

/// `enrich simulate`: serves the API simulator (Nymble, B2B or AchieveApex) until SIGINT/SIGTERM.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a faithful simulator of the Nymble, B2B or AchieveApex API (for the demo, tests, benchmarks).",
        discussion: """
            Serves one API as the contract describes, chosen with --dialect. nymble (the default): POST \
            /api/auth/login and POST /api/auth/access. b2b: POST /auth/login, POST /auth/refresh (rotating \
            refresh tokens), POST /api/v2/commerce/lookup and POST /_admin/revoke-refresh (revoke every refresh \
            token). achieveapex: POST /authentication (strategies local and jwt), DELETE /authentication \
            (logout) and POST /commerce-context. Every dialect also serves GET /_stats (counters as JSON) and \
            POST /_admin/revoke (revoke every access token). Limits and faults are off by default. It accepts \
            the contract's example credentials (and the username, email and password below) unless told others.

            \(SettingsHelp.text(for: Settings.Simulator.all))
            """
    )

    @Argument(
        parsing: .allUnrecognized,
        help: ArgumentHelp("Settings as --name value; every one is listed below.", valueName: "settings")
    )
    var arguments: [String] = []

    func validate() throws { _ = try sources() }

    /// The settings given as flags, over the process environment.
    func sources(_ environment: Environment = Environment()) throws -> SettingSources {
        do {
            return SettingSources(
                flags: try SettingSources.parseFlags(arguments, allowed: Settings.Simulator.all),
                environment: environment
            )
        } catch {
            throw ValidationError(error.description)
        }
    }

    func run() async throws {
        try await reportingErrors {
            let sources = try sources()
            try sources.check(Settings.Simulator.all)
            let configuration = try sources.simulatorConfiguration()
            let logger = try LoggingSetup.makeLogger(label: "enrich.simulate", sources: sources)
            let simulator = NymbleSimulator(configuration: configuration, logger: logger)
            let announcer = Announcer(simulator: simulator, logger: logger)
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: announcer, successTerminationBehavior: .gracefullyShutdownGroup)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger
                )
            )
            try await group.run()
            return EnrichExitCode.success
        }
    }
}

/// Runs the simulator and logs where it listens (the port matters when 0 was asked for).
private struct Announcer: Service {
    let simulator: NymbleSimulator
    let logger: Logger

    func run() async throws {
        let configuration = simulator.configuration
        try await simulator.run(onListening: { port in
            logger.notice(
                "API simulator listening",
                metadata: [
                    "url": "http://\(configuration.host):\(port)",
                    "dialect": "\(configuration.dialect)",
                    "token_lifetime": "\(configuration.tokenLifetime)",
                    "rate": "\(configuration.accessRate.map { "\($0)/s" } ?? "unlimited")",
                    "latency": "\(configuration.latency)",
                ]
            )
            FileHandle.standardOutput.write(Data("listening on http://\(configuration.host):\(port)\n".utf8))
        })
    }
}
