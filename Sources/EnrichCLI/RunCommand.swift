import ArgumentParser
import EnrichQueue
import EnrichThrottle
import EnrichToken
import EnrichWorker
import Foundation
import Logging
import NymbleAPI
import ServiceLifecycle
import Synchronization

/// `enrich run`: drains the queue through the Nymble API (or keeps following it) and records the run.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Call the Nymble API for every queued pair and write the commerce context back.",
        discussion: """
            Without --follow the run drains the queue and exits (the cron mode): it ends when no pending row \
            is left, waiting for rows whose retry is due. With --follow it keeps running and wakes on new work \
            (LISTEN/NOTIFY, polling as a fallback). Credentials: NYMBLE_ORG_CODE, NYMBLE_CLIENT_ID and \
            NYMBLE_CLIENT_SECRET (or NYMBLE_CLIENT_SECRET_FILE; the secret has no flag so that it never shows \
            in a process list). SIGINT/SIGTERM stop claiming, let in-flight calls finish within \
            --shutdown-grace, release unstarted rows and record the run interrupted (exit 6; 0 with --follow, \
            where a signal is the normal way to stop).

            \(EnrichExitCode.helpText)
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var options: RunOptions

    func run() async throws {
        try await reportingErrors { try await execute() }
    }

    private func execute() async throws -> Int32 {
        let environment = Environment()
        let logger = try database.makeLogger()
        let databaseConfiguration = try database.configuration(environment)
        let settings = try options.settings(environment)
        let progress = ProgressPrinter.make(mode: settings.progress, logEvery: settings.progressLogInterval)
        let report: RunReport = try await Database.withDatabase(databaseConfiguration, logger: logger) { db in
            try await NymbleClient.withClient(configuration: settings.client, logger: logger) { client in
                try await Self.runWorker(
                    database: db,
                    client: client,
                    settings: settings,
                    progress: progress,
                    logger: logger
                )
            }
        }
        progress?.finish()
        print(RunSummaryText(report).text)
        return exitCode(for: report, follow: settings.worker.follow)
    }

    private static func runWorker(
        database: Database,
        client: NymbleClient,
        settings: RunOptions.Settings,
        progress: ProgressPrinter?,
        logger: Logger
    ) async throws -> RunReport {
        let credentials = settings.credentials
        let store = SharedTokenStore(configuration: settings.token, clock: ContinuousClock(), logger: logger) {
            try await client.login(credentials)
        }
        var onProgress: (@Sendable (WorkerProgress) -> Void)?
        if let progress {
            onProgress = { progress.show($0, logger: logger) }
        }
        let worker = Worker(
            configuration: settings.worker,
            database: database,
            client: client,
            tokens: store,
            logger: logger,
            onProgress: onProgress
        )
        return try await WorkerService.run(worker, logger: logger)
    }

    func exitCode(for report: RunReport, follow: Bool) -> Int32 {
        switch report.state {
        case .failed:
            printError("enrich: error: run \(report.runID) failed: \(report.error.map { "\($0)" } ?? "unknown error")")
            return EnrichExitCode.failure
        case .interrupted:
            return follow ? EnrichExitCode.success : EnrichExitCode.interrupted
        default:
            return report.statistics.counters.failed > 0 ? EnrichExitCode.someRowsFailed : EnrichExitCode.success
        }
    }
}

/// Runs the worker under a `ServiceGroup` that turns SIGINT/SIGTERM into a graceful shutdown.
final class WorkerService: Service {
    private let worker: Worker
    private let report = Mutex<RunReport?>(nil)

    private init(_ worker: Worker) { self.worker = worker }

    func run() async throws {
        let result = try await worker.execute()
        report.withLock { $0 = result }
    }

    static func run(_ worker: Worker, logger: Logger) async throws -> RunReport {
        let service = WorkerService(worker)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        guard let report = service.report.withLock({ $0 }) else { throw CancellationError() }
        return report
    }
}

/// The one-line summary printed on standard output when a run ends.
struct RunSummaryText {
    let text: String

    init(_ report: RunReport) {
        let counters = report.statistics.counters
        let seconds = report.elapsed.secondsValue
        let finished = counters.succeeded + counters.failed
        let rate = seconds > 0 ? Double(finished) / seconds : 0
        var parts = [
            "\(counters.succeeded) done", "\(counters.failed) failed",
            "\(counters.retried) retried later", "\(counters.throttled) throttled (429)",
            "\(report.logins) login\(report.logins == 1 ? "" : "s")",
        ]
        if report.statistics.released > 0 { parts.append("\(report.statistics.released) released unstarted") }
        text =
            "run \(report.runID) \(report.state.rawValue): " + parts.joined(separator: ", ")
            + String(format: " in %.1f s (%.0f rows/s)", seconds, rate)
    }
}
