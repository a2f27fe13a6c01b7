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
            if silent > seconds(staleAfter) {
                return problem(
                    "is stuck: running since \(startedAgo) ago, no heartbeat for \(DurationText.format(silent)) "
                        + "(host \(run.host), pid \(run.pid))"
                )
            }
            if let maxAge, now.timeIntervalSince(run.startedAt) > seconds(maxAge) {
                return problem(
                    "is still running after \(startedAgo), more than --max-age \(DurationText.format(seconds(maxAge))) "
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
            if let maxAge, now.timeIntervalSince(run.startedAt) > seconds(maxAge) {
                return problem(
                    "is the last run and started \(startedAgo) ago, more than --max-age "
                        + "\(DurationText.format(seconds(maxAge))): is the schedule running?"
                )
            }
            return RunHealth(isProblem: false, line: "OK: \(name) succeeded \(startedAgo) ago: \(tally)")
        }
    }
}

/// Durations as people write them: `26h`, `90m`, `45s`, `2d`, `1h30m` or plain seconds.
public enum DurationText {
    /// Parses `text`; nil when it is not a positive duration.
    public static func parse(_ text: String) -> Duration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if let seconds = Double(trimmed) { return seconds > 0 && seconds.isFinite ? .seconds(seconds) : nil }
        var total = 0.0
        var number = ""
        var sawUnit = false
        for character in trimmed {
            if character.isNumber || character == "." {
                number.append(character)
                continue
            }
            let unit: Double
            switch character {
            case "d": unit = 86_400
            case "h": unit = 3_600
            case "m": unit = 60
            case "s": unit = 1
            default: return nil
            }
            guard let value = Double(number) else { return nil }
            total += value * unit
            number = ""
            sawUnit = true
        }
        guard sawUnit, number.isEmpty, total > 0 else { return nil }
        return .seconds(total)
    }

    /// `3h12m`, `4m05s`, `12s`, `2d3h`.
    public static func format(_ seconds: Double) -> String {
        let whole = Int(max(0, seconds).rounded())
        let (days, hours, minutes, secs) = (whole / 86_400, whole % 86_400 / 3_600, whole % 3_600 / 60, whole % 60)
        if days > 0 { return "\(days)d\(hours)h" }
        if hours > 0 { return "\(hours)h\(String(format: "%02d", minutes))m" }
        if minutes > 0 { return "\(minutes)m\(String(format: "%02d", secs))s" }
        return "\(secs)s"
    }
}

private func seconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return Double(seconds) + Double(attoseconds) / 1e18
}
