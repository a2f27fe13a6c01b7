import ArgumentParser
import EnrichSettings
import Foundation
import Logging
import NymbleSimulator
import ServiceLifecycle

/// `enrich simulate`: serves the Nymble API simulator until SIGINT/SIGTERM.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a faithful simulator of the Nymble Commerce API (for the demo, tests and benchmarks).",
        discussion: """
            Serves POST /api/auth/login and POST /api/auth/access as the contract describes, GET /_stats \
            (counters as JSON) and POST /_admin/revoke (revoke every token). Limits and faults are off by \
            default. It accepts the credentials in NYMBLE_ORG_CODE, NYMBLE_CLIENT_ID and NYMBLE_CLIENT_SECRET \
            (or the flags), defaulting to the contract's example values.
            """
    )

    @Option(help: ArgumentHelp("Address to bind (env ENRICH_SIM_HOST; default 127.0.0.1).", valueName: "host"))
    var host: String?
    @Option(
        help: ArgumentHelp("Port to bind, 0 for any free port (env ENRICH_SIM_PORT; default 8080).", valueName: "port")
    )
    var port: Int?
    @Option(
        name: .customLong("org-code"),
        help: ArgumentHelp("Accepted OrgCode (env NYMBLE_ORG_CODE).", valueName: "code")
    )
    var orgCode: String?
    @Option(
        name: .customLong("client-id"),
        help: ArgumentHelp("Accepted ClientId (env NYMBLE_CLIENT_ID).", valueName: "id")
    )
    var clientId: String?
    @Option(
        name: .customLong("client-secret"),
        help: ArgumentHelp(
            "Accepted ClientSecret (env NYMBLE_CLIENT_SECRET or NYMBLE_CLIENT_SECRET_FILE).",
            valueName: "secret"
        )
    )
    var clientSecret: String?
    @Option(
        name: .customLong("token-lifetime"),
        help: ArgumentHelp(
            "ExpiresIn of issued tokens, in seconds (env ENRICH_SIM_TOKEN_LIFETIME; default 86400).",
            valueName: "seconds"
        )
    )
    var tokenLifetime: Double?
    @Option(
        name: .customLong("logins-per-minute"),
        help: ArgumentHelp(
            "Logins allowed per minute per ClientId (env ENRICH_SIM_LOGINS_PER_MINUTE; default 10).",
            valueName: "n"
        )
    )
    var loginsPerMinute: Int?
    @Option(
        help: ArgumentHelp(
            "Limit /access to this many requests per second, answering 429 beyond it (env ENRICH_SIM_RATE; default unlimited).",
            valueName: "req/s"
        )
    )
    var rate: Double?
    @Option(
        help: ArgumentHelp(
            "Burst size of the /access limit, in requests (env ENRICH_SIM_BURST; default one second of --rate).",
            valueName: "n"
        )
    )
    var burst: Double?
    @Option(
        name: .customLong("retry-after"),
        help: ArgumentHelp(
            "Retry-After form on 429: seconds, http-date or none (env ENRICH_SIM_RETRY_AFTER; default seconds).",
            valueName: "form"
        )
    )
    var retryAfter: String?
    @Flag(
        name: .customLong("record-times"),
        help: "Record login times and each UserId's first /access arrival time in GET /_stats (benchmarks)."
    )
    var recordTimes = false
    @Option(
        help: ArgumentHelp(
            "Delay before each answer: 0, 50ms, 1s or a uniform range 20ms-80ms (env ENRICH_SIM_LATENCY; default 0).",
            valueName: "delay"
        )
    )
    var latency: String?
    @Option(
        name: .customLong("error-rate"),
        help: ArgumentHelp(
            "Share 0-1 of /access calls answered 500/502/503 (env ENRICH_SIM_ERROR_RATE; default 0).",
            valueName: "share"
        )
    )
    var errorRate: Double?
    @Option(
        name: .customLong("drop-rate"),
        help: ArgumentHelp(
            "Share 0-1 of /access calls whose connection is dropped (env ENRICH_SIM_DROP_RATE; default 0).",
            valueName: "share"
        )
    )
    var dropRate: Double?
    @Option(
        name: .customLong("slow-rate"),
        help: ArgumentHelp(
            "Share 0-1 of /access calls delayed by --slow-delay (env ENRICH_SIM_SLOW_RATE; default 0).",
            valueName: "share"
        )
    )
    var slowRate: Double?
    @Option(
        name: .customLong("slow-delay"),
        help: ArgumentHelp(
            "Extra delay of slow answers, e.g. 2s (env ENRICH_SIM_SLOW_DELAY; default 2s).",
            valueName: "delay"
        )
    )
    var slowDelay: String?
    @Option(
        name: .customLong("log-level"),
        help: ArgumentHelp("Log level (env ENRICH_LOG_LEVEL; default info).", valueName: "level")
    )
    var logLevel: String?

    func run() async throws {
        try await reportingErrors {
            let environment = Environment()
            let configuration = try simulatorConfiguration(environment)
            let logger = try LoggingSetup.makeLogger(
                label: "enrich.simulate",
                sources: SettingSources(
                    flags: logLevel.map { [Settings.logLevel.name: $0] } ?? [:],
                    environment: environment
                )
            )
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

    func simulatorConfiguration(_ environment: Environment) throws -> SimulatorConfiguration {
        var configuration = SimulatorConfiguration()
        configuration.host = try host ?? environment.value("ENRICH_SIM_HOST") ?? "127.0.0.1"
        configuration.port = try port ?? environment.parsed("ENRICH_SIM_PORT") ?? 8080
        configuration.orgCode = try orgCode ?? environment.value("NYMBLE_ORG_CODE") ?? configuration.orgCode
        configuration.clientId = try clientId ?? environment.value("NYMBLE_CLIENT_ID") ?? configuration.clientId
        configuration.clientSecret =
            try clientSecret ?? environment.value("NYMBLE_CLIENT_SECRET") ?? configuration.clientSecret
        if let lifetime = try tokenLifetime ?? environment.parsed("ENRICH_SIM_TOKEN_LIFETIME", as: Double.self) {
            guard lifetime >= 1 else { throw ValidationError("--token-lifetime must be at least 1 second") }
            configuration.tokenLifetime = .seconds(lifetime)
        }
        configuration.loginsPerMinute = try loginsPerMinute ?? environment.parsed("ENRICH_SIM_LOGINS_PER_MINUTE") ?? 10
        configuration.accessRate = try rate ?? environment.parsed("ENRICH_SIM_RATE", as: Double.self)
        configuration.accessBurst = try burst ?? environment.parsed("ENRICH_SIM_BURST", as: Double.self)
        configuration.recordTimes = recordTimes
        if let text = try retryAfter ?? environment.value("ENRICH_SIM_RETRY_AFTER") {
            guard let style = SimulatorConfiguration.RetryAfterStyle(text) else {
                throw ValidationError("--retry-after must be seconds, http-date or none (got \(text))")
            }
            configuration.retryAfterStyle = style
        }
        if let text = try latency ?? environment.value("ENRICH_SIM_LATENCY") {
            guard let parsed = SimulatorConfiguration.Latency(text) else {
                throw ValidationError("--latency must look like 0, 50ms, 1.5s or 20ms-80ms (got \(text))")
            }
            configuration.latency = parsed
        }
        configuration.serverErrorRate = try share(
            errorRate ?? environment.parsed("ENRICH_SIM_ERROR_RATE"),
            "--error-rate"
        )
        configuration.dropRate = try share(dropRate ?? environment.parsed("ENRICH_SIM_DROP_RATE"), "--drop-rate")
        configuration.slowRate = try share(slowRate ?? environment.parsed("ENRICH_SIM_SLOW_RATE"), "--slow-rate")
        if let text = try slowDelay ?? environment.value("ENRICH_SIM_SLOW_DELAY") {
            guard let parsed = SimulatorConfiguration.Latency(text), parsed.minimum == parsed.maximum else {
                throw ValidationError("--slow-delay must look like 500ms or 2s (got \(text))")
            }
            configuration.slowDelay = parsed.minimum
        }
        if let rate = configuration.accessRate, rate <= 0 { throw ValidationError("--rate must be positive") }
        if configuration.loginsPerMinute < 1 { throw ValidationError("--logins-per-minute must be at least 1") }
        return configuration
    }

    private func share(_ value: Double?, _ name: String) throws -> Double {
        guard let value else { return 0 }
        guard (0...1).contains(value) else { throw ValidationError("\(name) must be between 0 and 1 (got \(value))") }
        return value
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
                "Nymble API simulator listening",
                metadata: [
                    "url": "http://\(configuration.host):\(port)",
                    "token_lifetime": "\(configuration.tokenLifetime)",
                    "rate": "\(configuration.accessRate.map { "\($0)/s" } ?? "unlimited")",
                    "latency": "\(configuration.latency)",
                ]
            )
            FileHandle.standardOutput.write(Data("listening on http://\(configuration.host):\(port)\n".utf8))
        })
    }
}
