import EnrichCore
import EnrichQueue
import Foundation
import Mustache

/// The read-only status page: queue depth by state, the runs with progress and ETA, throughput and 429s
/// over time for the recent runs (SVG drawn on the server), failures by reason and the live fleet. Rendered
/// with Mustache templates (``StatusPageTemplates``), every value HTML-escaped by the template engine.
public struct StatusPage: Sendable {
    public var report: StatusReport
    public var failures: FailureReport
    /// The samples of the recent runs, oldest run first: (run id, job name, samples).
    public var series: [(run: Int64, job: String, samples: [RunSample])]
    /// Seconds between the page's own refreshes.
    public var refreshSeconds: Int
    public var generatedAt: Date

    /// How many runs the charts show.
    public static let chartedRuns = 5

    /// Reads what the page shows from the database.
    public static func read(_ db: Database, refreshSeconds: Int = 5) async throws -> StatusPage {
        let report = try await StatusReport.read(db, limit: 15)
        let failures = try await Queue(database: db).failures(FailureFilter(), limit: 10)
        let charted = report.runs.prefix(chartedRuns).map { ($0.run.id, $0.run.jobName) }
        let samples = try await RunSamples(database: db).read(runs: charted.map(\.0))
        let series = charted.reversed().map { run in (run: run.0, job: run.1, samples: samples[run.0] ?? []) }
        return StatusPage(
            report: report,
            failures: failures,
            series: series,
            refreshSeconds: refreshSeconds,
            generatedAt: Date()
        )
    }

    public init(
        report: StatusReport,
        failures: FailureReport,
        series: [(run: Int64, job: String, samples: [RunSample])],
        refreshSeconds: Int,
        generatedAt: Date
    ) {
        self.report = report
        self.failures = failures
        self.series = series
        self.refreshSeconds = refreshSeconds
        self.generatedAt = generatedAt
    }

    /// The whole HTML page.
    public func html() -> String {
        StatusPageTemplates.library.render(context, withTemplate: "page") ?? ""
    }

    private var context: [String: Any] {
        let time = ISO8601DateFormatter()
        let queue = report.queue
        let states: [[String: Any]] = [
            ("pending", queue.pending), ("running", queue.running), ("done", queue.done), ("failed", queue.failed),
        ].map { ["state": $0.0, "count": Self.grouped($0.1)] }
        let runs: [[String: Any]] = report.runs.map { summary in
            let run = summary.run
            let percent = run.totalItems.flatMap {
                $0 > 0 ? min(100, Int(Double(summary.processed) * 100 / Double($0))) : nil
            }
            var state = run.state.rawValue
            if summary.isDead { state += " (dead)" } else if run.stalledSince != nil { state += " (stuck)" }
            return [
                "id": run.id, "job": run.jobName, "trigger": run.trigger.rawValue, "state": state,
                "stateClass": summary.isDead ? "failed" : run.state.rawValue,
                "started": time.string(from: run.startedAt),
                "processed": Self.grouped(summary.processed), "total": run.totalItems.map(Self.grouped) ?? "?",
                "percent": percent.map(String.init) ?? "", "hasPercent": percent != nil,
                "rate": summary.itemsPerSecond.map { String(format: "%.0f", $0) } ?? "–",
                "eta": summary.etaSeconds.map { DurationText.format($0) } ?? "–",
                "failed": run.counters.failed, "throttled": run.counters.throttled, "logins": run.counters.logins,
                "host": "\(run.host):\(run.pid)", "lastError": run.lastError.map { String($0.prefix(300)) } ?? "",
            ]
        }
        let groups: [[String: Any]] = failures.groups.map { group in
            [
                "reason": String(group.reason.prefix(300)), "count": Self.grouped(group.count),
                "first": time.string(from: group.firstSeen), "last": time.string(from: group.lastSeen),
                "examples": group.examples.map { "\($0.organizationId)/\($0.userId)" }.joined(separator: ", "),
            ]
        }
        let labelled = series.map { (label: "run \($0.run) · \($0.job)", samples: $0.samples) }
        let throughput = LineChart.rates(labelled, unit: "rows/s") { $0.finished }
        let throttled = LineChart.rates(labelled, unit: "429s/s") { $0.throttled }
        var context: [String: Any] = [
            "schema": report.schema, "generatedAt": time.string(from: generatedAt), "refresh": refreshSeconds,
            "states": states, "total": Self.grouped(queue.total), "runs": runs, "hasRuns": !runs.isEmpty,
            "failureGroups": groups, "failedTotal": Self.grouped(failures.total), "hasFailures": !groups.isEmpty,
            "throughput": StatusPageTemplates.chart(throughput), "throttled": StatusPageTemplates.chart(throttled),
        ]
        if let fleet = report.fleet, !fleet.workers.isEmpty || !fleet.tokens.isEmpty {
            context["fleet"] = ["lines": StatusReport.lines(fleet)]
        }
        return context
    }

    /// 1234567 → "1,234,567".
    static func grouped(_ value: Int64) -> String {
        let digits = String(value.magnitude)
        var out = ""
        for (index, digit) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { out.append(",") }
            out.append(digit)
        }
        return (value < 0 ? "-" : "") + out
    }
}
