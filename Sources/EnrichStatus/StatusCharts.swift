import Foundation

/// The counters of a run at one heartbeat (`run_samples`), for the status page's charts.
public struct RunSample: Sendable, Equatable {
    /// Seconds since the run started.
    public var elapsed: Double
    public var finished: Int64
    public var throttled: Int64

    public init(elapsed: Double, finished: Int64, throttled: Int64) {
        self.elapsed = elapsed
        self.finished = finished
        self.throttled = throttled
    }
}

/// A line chart drawn on the server as SVG: one line per run, x in seconds since the run started. Only
/// numbers and the template's own text reach the SVG (labels go through the template, escaped).
struct LineChart {
    struct Line {
        var label: String
        var color: String
        /// (x, y) in data units.
        var points: [(Double, Double)]
    }

    static let width = 720.0
    static let height = 220.0
    static let margin = (left: 56.0, right: 12.0, top: 12.0, bottom: 28.0)
    static let palette = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2"]

    var lines: [Line]
    var unit: String

    /// Per-second rates between consecutive samples of each run: `value` picks the counter.
    static func rates(
        _ series: [(label: String, samples: [RunSample])],
        unit: String,
        value: (RunSample) -> Int64
    ) -> LineChart {
        var lines: [Line] = []
        for (index, run) in series.enumerated() {
            // Over three heartbeats: results are written in batches, so one interval alone is spiky.
            var points: [(Double, Double)] = []
            for (index, sample) in run.samples.enumerated().dropFirst() {
                let previous = run.samples[max(0, index - 3)]
                guard sample.elapsed > previous.elapsed else { continue }
                let rate = Double(value(sample) - value(previous)) / (sample.elapsed - previous.elapsed)
                points.append((sample.elapsed, max(0, rate)))
            }
            if !points.isEmpty {
                lines.append(Line(label: run.label, color: palette[index % palette.count], points: points))
            }
        }
        return LineChart(lines: lines, unit: unit)
    }

    /// The values the SVG template renders: polylines in view-box coordinates, axis ticks and a legend.
    var context: [String: Any] {
        let maxX = max(1, lines.flatMap { $0.points.map(\.0) }.max() ?? 1)
        let maxY = Self.niceCeiling(lines.flatMap { $0.points.map(\.1) }.max() ?? 0)
        let plotWidth = Self.width - Self.margin.left - Self.margin.right
        let plotHeight = Self.height - Self.margin.top - Self.margin.bottom
        func x(_ value: Double) -> Double { Self.margin.left + value / maxX * plotWidth }
        func y(_ value: Double) -> Double { Self.margin.top + plotHeight - value / maxY * plotHeight }
        let polylines: [[String: Any]] = lines.map { line in
            [
                "color": line.color, "label": line.label,
                "points": line.points.map { "\(Self.format(x($0.0))),\(Self.format(y($0.1)))" }.joined(separator: " "),
            ]
        }
        let yTicks: [[String: Any]] = (0...5).map { step in
            let value = maxY * Double(step) / 5
            return ["y": Self.format(y(value)), "label": Self.short(value)]
        }
        let xTicks: [[String: Any]] = (0...4).map { step in
            let value = maxX * Double(step) / 4
            return ["x": Self.format(x(value)), "label": "\(Self.short(value)) s"]
        }
        let legend: [[String: Any]] = lines.enumerated().map { index, line in
            ["color": line.color, "label": line.label, "x": Self.format(Self.margin.left + 8 + Double(index) * 170)]
        }
        return [
            "width": Self.format(Self.width), "height": Self.format(Self.height), "lines": polylines,
            "yTicks": yTicks, "xTicks": xTicks, "legend": legend, "unit": unit, "empty": lines.isEmpty,
            "left": Self.format(Self.margin.left), "right": Self.format(Self.width - Self.margin.right),
            "bottom": Self.format(Self.height - Self.margin.bottom), "top": Self.format(Self.margin.top),
        ]
    }

    /// 1, 2 or 5 times a power of ten, at least `value` (and at least 1).
    static func niceCeiling(_ value: Double) -> Double {
        guard value > 1 else { return 1 }
        let power = pow(10, floor(log10(value)))
        for factor in [1.0, 2, 5, 10] where factor * power >= value { return factor * power }
        return 10 * power
    }

    static func format(_ value: Double) -> String { String(format: "%.1f", value) }

    static func short(_ value: Double) -> String {
        if value >= 10_000 { return "\(Int((value / 1000).rounded()))k" }
        return value == value.rounded() || value >= 10 ? "\(Int(value.rounded()))" : String(format: "%.1f", value)
    }
}
