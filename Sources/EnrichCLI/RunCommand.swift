import ArgumentParser
import EnrichJobs
import EnrichQueue
import EnrichSettings
import EnrichWorker
import Foundation

/// `enrich run`: reads its settings, hands the plan to the job runner, prints how the run ended and exits
/// with the matching code.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Call the Nymble API for every queued pair and write the commerce context back.",
        discussion: """
            Without --follow the run drains the queue and exits (the cron mode): it ends when no pending row \
            is left, waiting for rows whose retry is due. With --follow it keeps running and wakes on new work \
            (LISTEN/NOTIFY, polling as a fallback). SIGINT/SIGTERM stop claiming, let in-flight calls finish \
            within --shutdown-grace, release unstarted rows and record the run interrupted (exit 6; 0 with \
            --follow, where a signal is the normal way to stop); the process is gone within the grace + 5 s.

            \(SettingsHelp.text(for: Settings.database + Settings.run))

            \(EnrichExitCode.helpText)
            """
    )

    @Argument(
        parsing: .allUnrecognized,
        help: ArgumentHelp("Settings as --name value; every one is listed below.", valueName: "settings")
    )
    var arguments: [String] = []

    static let settings = Settings.database + Settings.run

    func validate() throws { _ = try flags() }

    func run() async throws {
        try await reportingErrors { try await execute() }
    }

    /// The settings given as flags, by name.
    func flags() throws -> [String: String] {
        do {
            return try SettingSources.parseFlags(arguments, allowed: Self.settings)
        } catch {
            throw ValidationError(error.description)
        }
    }

    private func execute() async throws -> Int32 {
        let plan = try RunPlan.resolve(flags: try flags(), environment: Environment())
        let logger = try LoggingSetup.makeLogger(label: "enrich", sources: plan.sources)
        let progress = try ProgressPrinter.make(plan.sources)
        let follow = plan.worker.follow
        var onProgress: (@Sendable (WorkerProgress) -> Void)?
        if let progress { onProgress = { progress.show($0, logger: logger) } }
        let runner = JobRunner(
            plan: plan,
            logger: logger,
            onProgress: onProgress,
            onStopDeadline: { stuck in
                // The last resort: whatever is stuck, the process ends; the rows it holds go to the next run.
                progress?.finish()
                printError("enrich: error: run \(stuck.runID) \(stuck.message)")
                Foundation.exit(
                    stuck.state == .failed
                        ? EnrichExitCode.failure : follow ? EnrichExitCode.success : EnrichExitCode.interrupted
                )
            }
        )
        let report = try await runner.run()
        progress?.finish()
        print(RunSummaryText(report).text)
        return exitCode(for: report, follow: follow)
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
