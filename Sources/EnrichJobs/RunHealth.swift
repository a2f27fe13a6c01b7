import EnrichCore
import EnrichQueue
import Foundation

/// What `enrich status --check` says about a job's last run: one line for a monitoring system or cron
/// mail, and whether it is a problem (exit 7) or not (exit 0).
public struct RunHealth: Sendable, Equatable {
    public let isProblem: Bool
    public let line: String

    public init(isProblem: Bool, line: String) {
        self.isProblem = isProblem
        self.line = line
    }

    /// Judges the latest run of a job at `now`.
    ///
    /// A problem: no run at all, a run that failed, was interrupted or abandoned, a `running` row whose
    /// process is gone (`isDead`: its liveness lock was released) or whose heartbeat is older than
    /// `staleAfter`, a running run that holds rows but completes none (stalled), or a last run that started
    /// longer than `maxAge` ago (the schedule did not fire, or a run still going after that long is hung). `now` is
    /// the database's clock, which wrote the timestamps. A live run and a succeeded one are fine (rows
    /// that failed permanently are counted in the line, not a problem of the job).
    public static func judge(
        job: String?,
        latest: JobRun?,
        now: Date,
        maxAge: Duration?,
        staleAfter: Duration,
        isDead: Bool = false
    ) -> RunHealth {
        let subject = job.map { "job \($0)" } ?? "enrich"
        guard let run = latest else {
            return RunHealth(isProblem: true, line: "CRITICAL: \(subject) has never run")
        }
        let name = "\(job == nil ? "job \(run.jobName)" : subject) run \(run.id)"
        let startedAgo = DurationText.format(now.timeIntervalSince(run.startedAt))
        let tally = "\(run.counters.succeeded) done, \(run.counters.failed) failed"
        func problem(_ text: String) -> RunHealth { RunHealth(isProblem: true, line: "CRITICAL: \(name) \(text)") }
        switch run.state {
        case .running:
            if isDead {
                return problem(
                    "is dead: its process is gone (host \(run.host), pid \(run.pid)), last heartbeat "
                        + "\(DurationText.format(now.timeIntervalSince(run.heartbeatAt))) ago; the next run marks it "
                        + "abandoned and takes over its rows"
                )
            }
            if let stalledSince = run.stalledSince {
                return problem(
                    "is stuck: it holds rows but has completed none for "
                        + "\(DurationText.format(now.timeIntervalSince(stalledSince))) while the database and the API "
                        + "answer (host \(run.host), pid \(run.pid)); it stops itself at its stall timeout"
                )
            }
            let silent = now.timeIntervalSince(run.heartbeatAt)
            if silent > staleAfter.inSeconds {
                return problem(
                    "is stuck: running since \(startedAgo) ago, no heartbeat for \(DurationText.format(silent)) "
                        + "(host \(run.host), pid \(run.pid))"
                )
            }
            if let maxAge, now.timeIntervalSince(run.startedAt) > maxAge.inSeconds {
                return problem(
                    "is still running after \(startedAgo), more than --max-age \(DurationText.format(maxAge.inSeconds)) "
                        + "(host \(run.host), pid \(run.pid)): hung, or far slower than usual?"
                )
            }
            let total = run.totalItems.map { " of \($0)" } ?? ""
            return RunHealth(
                isProblem: false,
                line: "OK: \(name) is running (started \(startedAgo) ago): \(run.counters.succeeded)\(total) done, "
                    + "\(run.counters.failed) failed"
            )
        case .failed:
            return problem("failed \(startedAgo) ago: \(run.lastError ?? "no error recorded")")
        case .interrupted:
            return problem("was interrupted (started \(startedAgo) ago): \(tally)")
        case .abandoned:
            return problem("was abandoned (started \(startedAgo) ago): \(run.lastError ?? "its process died")")
        case .succeeded:
            if let maxAge, now.timeIntervalSince(run.startedAt) > maxAge.inSeconds {
                return problem(
                    "is the last run and started \(startedAgo) ago, more than --max-age "
                        + "\(DurationText.format(maxAge.inSeconds)): is the schedule running?"
                )
            }
            return RunHealth(isProblem: false, line: "OK: \(name) succeeded \(startedAgo) ago: \(tally)")
        }
    }
}
