import EnrichCore
import EnrichSettings
import EnrichWorker
import Foundation
import Logging
import Synchronization

/// Shows a running job's progress: a live bar below the log lines on a terminal (``TerminalDisplay``), a log
/// line every few seconds otherwise.
final class ProgressPrinter: Sendable {
    enum Mode: String {
        /// A live line when standard error is a terminal, log lines otherwise.
        case auto
        /// Always the live bar (redrawn in place, log lines printed above it).
        case line
        /// Always log lines.
        case log
        case off
    }

    private let live: Bool
    private let logEvery: Duration
    private let lastLog = Mutex<Duration?>(nil)

    /// The printer the settings ask for (`--progress`, `--progress-log-interval`); nil when progress is off.
    static func make(_ sources: SettingSources) throws -> ProgressPrinter? {
        let mode = Mode(rawValue: try sources.value(Settings.progress) ?? "auto") ?? .auto
        return make(mode: mode, logEvery: try sources.value(Settings.progressLogInterval) ?? .seconds(10))
    }

    /// nil when progress is off.
    static func make(mode: Mode, logEvery: Duration) -> ProgressPrinter? {
        switch mode {
        case .off: return nil
        case .line: return ProgressPrinter(live: true, logEvery: logEvery)
        case .log: return ProgressPrinter(live: false, logEvery: logEvery)
        case .auto: return ProgressPrinter(live: isatty(STDERR_FILENO) == 1, logEvery: logEvery)
        }
    }

    private init(live: Bool, logEvery: Duration) {
        self.live = live
        self.logEvery = logEvery
    }

    func show(_ progress: WorkerProgress, logger: Logger) {
        if live {
            TerminalDisplay.standardError.showBar(Self.bar(progress))
            return
        }
        let text = Self.line(progress)
        let due = lastLog.withLock { last -> Bool in
            guard last.map({ progress.elapsed - $0 >= logEvery }) ?? (progress.elapsed >= logEvery) else {
                return false
            }
            last = progress.elapsed
            return true
        }
        if due { logger.info("progress: \(text)") }
    }

    /// Leaves the last bar on screen so the summary starts on its own line.
    func finish() { TerminalDisplay.standardError.endBar() }

    /// `[██████░░░░░░░░░░░░░░]  30%  3000/10000 · 1020 rows/s · ETA 7s · 12 failed · 429s 3 · 1 login · send 300/s`
    static func bar(_ progress: WorkerProgress, width: Int = 20) -> String {
        let counters = progress.statistics.counters
        let finished = counters.succeeded + counters.failed
        var parts: [String] = []
        if let total = progress.totalItems, total > 0 {
            let share = min(1, Double(finished) / Double(total))
            let filled = Int((share * Double(width)).rounded(.down))
            let percent = Int((share * 100).rounded(.down))
            let meter = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            parts.append(
                "[\(meter)] \(String(repeating: " ", count: 3 - String(percent).count))\(percent)%  \(finished)/\(total)"
            )
        } else {
            parts.append("run \(progress.runID): \(finished) rows")
        }
        parts.append("\(Int(progress.itemsPerSecond.rounded())) rows/s")
        if let total = progress.totalItems, progress.itemsPerSecond > 0, total > finished {
            parts.append("ETA \(DurationText.format(Double(total - finished) / progress.itemsPerSecond))")
        }
        parts.append("\(counters.failed) failed")
        parts.append("429s \(counters.throttled)")
        parts.append("\(progress.logins) login\(progress.logins == 1 ? "" : "s")")
        if let rate = progress.sendRate { parts.append("send \(Int(rate.rounded()))/s") }
        return parts.joined(separator: " · ")
    }

    /// `run 7: 4210/10000 (42%) · 1020 rows/s · 3 retried · 12 failed · 429s 3 · send rate 300/s · ETA 6s`
    static func line(_ progress: WorkerProgress) -> String {
        let counters = progress.statistics.counters
        let finished = counters.succeeded + counters.failed
        var parts: [String] = []
        if let total = progress.totalItems, total > 0 {
            let percent = min(100, Int(Double(finished) * 100 / Double(total)))
            parts.append("run \(progress.runID): \(finished)/\(total) (\(percent)%)")
        } else {
            parts.append("run \(progress.runID): \(finished) rows")
        }
        parts.append("\(Int(progress.itemsPerSecond.rounded())) rows/s")
        parts.append("\(counters.failed) failed")
        if counters.retried > 0 { parts.append("\(counters.retried) retried") }
        parts.append("429s \(counters.throttled)")
        if let rate = progress.sendRate { parts.append("send rate \(Int(rate.rounded()))/s") }
        if let total = progress.totalItems, progress.itemsPerSecond > 0, total > finished {
            parts.append("ETA \(Int((Double(total - finished) / progress.itemsPerSecond).rounded()))s")
        }
        return parts.joined(separator: " · ")
    }
}
