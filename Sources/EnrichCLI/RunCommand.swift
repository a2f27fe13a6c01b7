import ArgumentParser
import EnrichJobs
import EnrichMetrics
import EnrichQueue
import EnrichThrottle
import EnrichToken
import EnrichWorker
import Foundation
import Logging
import NymbleAPI
import Prometheus
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
        let (job, environment) = try resolveJob(Environment())
        let logger = try database.makeLogger()
        let databaseConfiguration = try database.configuration(environment)
        let settings: RunOptions.Settings
        do {
            settings = try options.settings(environment)
        } catch let error as ValidationError {
            guard let job else { throw error }
            // The value may come from the job file: say so rather than only naming the flag.
            throw InputError(
                file: job.path,
                line: nil,
                problem: "\(error.message) (the flag, its environment variable or this job file's key of that name)"
            )
        }
        let progress = ProgressPrinter.make(mode: settings.progress, logEvery: settings.progressLogInterval)
        let registry = settings.metricsPort.map { _ in PrometheusCollectorRegistry() }
        let metrics = registry.map { RunMetrics(factory: PrometheusMetricsFactory(registry: $0)) } ?? RunMetrics()
        var services: [any Service] = []
        if let registry, let port = settings.metricsPort {
            services.append(MetricsEndpoint(registry: registry, host: settings.metricsHost, port: port, logger: logger))
        }
        let report: RunReport = try await Database.withDatabase(databaseConfiguration, logger: logger) { db in
            // The job's lock comes first: a second invocation gives up before it builds anything else.
            try await JobLock.withLock(jobName: job?.name, database: db) { lock in
                try await NymbleClient.withClient(configuration: settings.client, logger: logger) { client in
                    let run = RunInvocation(
                        database: db,
                        client: client,
                        settings: settings,
                        metrics: metrics,
                        services: services,
                        progress: progress,
                        logger: logger
                    )
                    guard let job, let lock else { return try await run.runWorker() }
                    return try await run.runJob(job, lock: lock)
                }
            }
        }
        progress?.finish()
        print(RunSummaryText(report).text)
        return exitCode(for: report, follow: settings.worker.follow)
    }

    /// The job named by `--job` (or ENRICH_JOB), and the environment with its settings layered under the
    /// process environment (flag > environment > job file > default).
    func resolveJob(_ environment: Environment) throws -> (JobDefinition?, Environment) {
        guard let reference = try options.job ?? environment.value("ENRICH_JOB") else { return (nil, environment) }
        if options.jobName != nil {
            throw ValidationError("--job-name cannot be combined with --job: a job's runs are recorded under its name")
        }
        let directory = try options.jobsDirectory ?? environment.value("ENRICH_JOBS_DIR") ?? "jobs"
        let job = try JobDefinition.load(reference, directory: directory)
        // An empty process variable counts as unset (Environment.value does the same), and a process
        // `NAME_FILE` outranks the job's `NAME`.
        let process = environment.values.filter { !$0.value.isEmpty }
        let fromJob = job.settings.filter { process[$0.key + "_FILE"] == nil }
        var layered = Environment(fromJob.merging(process) { _, processValue in processValue })
        layered.values["ENRICH_JOB_NAME"] = job.name
        return (job, layered)
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

/// One `enrich run` invocation once its database, API client and settings are ready.
struct RunInvocation {
    let database: Database
    let client: NymbleClient
    let settings: RunOptions.Settings
    let metrics: RunMetrics
    let services: [any Service]
    let progress: ProgressPrinter?
    let logger: Logger

    /// A job run, under the job's lock: mark dead runs of the job abandoned, enqueue its source, drain.
    func runJob(_ job: JobDefinition, lock: JobLock.Held) async throws -> RunReport {
        let jobRuns = JobRuns(database: database)
        let worker = settings.worker
        if case .sql(let sql) = job.source {
            do {
                let summary = try await Queue(database: database).enqueue(
                    fromSQL: sql,
                    maxAttempts: settings.worker.maxAttempts ?? 5,
                    origin: "\(job.path): source.sql"
                )
                logger.info(
                    "enqueued the job's source",
                    metadata: [
                        "job": "\(job.name)", "read": "\(summary.read)", "new": "\(summary.inserted)",
                        "queued_again": "\(summary.requeued)", "already_queued": "\(summary.alreadyQueued)",
                    ]
                )
            } catch {
                // Record the failed run, so that `status --check` sees a broken nightly job (best effort: the
                // database itself may be what failed).
                if let id = try? await jobRuns.start(jobName: job.name, trigger: worker.trigger, totalItems: nil) {
                    try? await jobRuns.finish(id: id, state: .failed, counters: RunCounters(), lastError: "\(error)")
                }
                throw error
            }
        }
        return try await runWorker(alongside: [LockWatchdog(lock: lock, interval: worker.heartbeatInterval)])
    }

    func runWorker(alongside extra: [any Service] = []) async throws -> RunReport {
        let (client, credentials) = (client, settings.credentials)
        let store = SharedTokenStore(configuration: settings.token, clock: ContinuousClock(), logger: logger) {
            try await client.login(credentials)
        }
        var onProgress: (@Sendable (WorkerProgress) -> Void)?
        if let progress {
            let logger = logger
            onProgress = { progress.show($0, logger: logger) }
        }
        let follow = settings.worker.follow
        let worker = Worker(
            configuration: settings.worker,
            database: database,
            api: client,
            tokens: store,
            logger: logger,
            metrics: metrics,
            onProgress: onProgress,
            onStopDeadline: { stuck in
                // The last resort: whatever is stuck, the process ends; the rows it holds go to the next run.
                progress?.finish()
                printError("enrich: error: run \(stuck.runID) \(stuck.message)")
                let code =
                    stuck.state == .failed
                    ? EnrichExitCode.failure
                    : follow ? EnrichExitCode.success : EnrichExitCode.interrupted
                exit(code)
            }
        )
        return try await WorkerService.run(worker, alongside: services + extra, logger: logger)
    }
}

/// Checks every heartbeat that the job lock is still held; when its session is gone it fails, and the
/// service group shuts the worker down gracefully (the run ends `interrupted`, the command exits 2).
struct LockWatchdog: Service {
    let lock: JobLock.Held
    let interval: Duration

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                while true {
                    try await Task.sleep(for: interval)
                    try await lock.verify()
                }
            }
        } catch is CancellationError {
            return  // the run ended: nothing left to guard
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

    /// Runs `worker` (and `services`, such as the metrics endpoint, which stop with it).
    static func run(_ worker: Worker, alongside services: [any Service] = [], logger: Logger) async throws -> RunReport
    {
        let service = WorkerService(worker)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)]
                    + services.map { .init(service: $0, failureTerminationBehavior: .gracefullyShutdownGroup) },
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
        let seconds = report.elapsed.inSeconds
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
