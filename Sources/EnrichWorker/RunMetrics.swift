import CoreMetrics
import EnrichQueue
import Logging
import NymbleAPI
import Synchronization

/// The metrics a run emits through swift-metrics (exported by `enrich run --metrics-port` as Prometheus).
///
/// Names follow Prometheus conventions; label values are a small fixed set, never an id or a message:
/// - `enrich_items_total{result}`: rows written back as `done`, `failed` (for good) or `retried` (back to
///   pending for a later attempt).
/// - `enrich_item_errors_total{reason}`: why an attempt did not succeed: `bad_request`, `server_error`,
///   `transport`, `undecodable`, `unexpected_status`, `unauthorized` (still 401 after re-logins).
/// - `enrich_api_calls_total{outcome}`: `/access` calls by answer: `ok`, `bad_request`, `unauthorized`,
///   `rate_limited`, `server_error`, `transport`, `undecodable`, `unexpected_status`.
/// - `enrich_api_throttled_total`: 429 answers. `enrich_logins_total`: logins performed.
/// - `enrich_api_call_duration_seconds`: latency histogram of `/access` calls (any answer).
/// - `enrich_queue_items{state}`: rows per queue state, refreshed at every heartbeat.
/// - `enrich_throttle_rate`: the throttle's send rate in requests/s (0 while unlimited).
public final class RunMetrics: Sendable {
    private let items: [String: Counter]
    private let errors: [String: Counter]
    private let calls: [String: Counter]
    private let throttled: Counter
    private let logins: Counter
    private let callDuration: Timer
    private let queueItems: [ItemState: Gauge]
    private let throttleRate: Gauge
    private let fleetWorkers: Gauge
    private let fleetTokenGeneration: Gauge
    private let fleetTokenExpiresIn: Gauge
    private let fleetLoginsLastHour: Gauge
    private let fleetPaused: Gauge
    private let fleetSharedRate: Gauge
    private let loginsReported = Mutex(0)

    static let callOutcomes = [
        "ok", "bad_request", "unauthorized", "rate_limited", "server_error", "transport", "unreachable", "undecodable",
        "unexpected_status", "invalid_credentials",
    ]

    /// Whether anything reads these metrics (gauges that cost a query are only refreshed then).
    public let isEnabled: Bool

    /// No metrics exported: every call is a no-op.
    public convenience init() { self.init(factory: NOOPMetricsHandler.instance, enabled: false) }

    /// Metrics created through `factory` (a Prometheus factory for `--metrics-port`).
    public convenience init(factory: any MetricsFactory) { self.init(factory: factory, enabled: true) }

    private init(factory: any MetricsFactory, enabled: Bool) {
        isEnabled = enabled
        func counters(_ label: String, _ key: String, _ values: [String]) -> [String: Counter] {
            Dictionary(
                uniqueKeysWithValues: values.map {
                    ($0, Counter(label: label, dimensions: [(key, $0)], factory: factory))
                }
            )
        }
        items = counters("enrich_items_total", "result", ["done", "failed", "retried"])
        errors = counters(
            "enrich_item_errors_total",
            "reason",
            [
                "bad_request", "server_error", "transport", "unreachable", "undecodable", "unexpected_status",
                "unauthorized",
            ]
        )
        calls = counters("enrich_api_calls_total", "outcome", Self.callOutcomes)
        throttled = Counter(label: "enrich_api_throttled_total", factory: factory)
        logins = Counter(label: "enrich_logins_total", factory: factory)
        callDuration = Timer(label: "enrich_api_call_duration_seconds", factory: factory)
        queueItems = Dictionary(
            uniqueKeysWithValues: ItemState.allCases.map {
                ($0, Gauge(label: "enrich_queue_items", dimensions: [("state", $0.rawValue)], factory: factory))
            }
        )
        throttleRate = Gauge(label: "enrich_throttle_rate", factory: factory)
        fleetWorkers = Gauge(label: "enrich_fleet_workers", factory: factory)
        fleetTokenGeneration = Gauge(label: "enrich_fleet_token_generation", factory: factory)
        fleetTokenExpiresIn = Gauge(label: "enrich_fleet_token_expires_in_seconds", factory: factory)
        fleetLoginsLastHour = Gauge(label: "enrich_fleet_logins_last_hour", factory: factory)
        fleetPaused = Gauge(label: "enrich_fleet_paused_seconds", factory: factory)
        fleetSharedRate = Gauge(label: "enrich_fleet_shared_rate", factory: factory)
    }

    /// The Prometheus-style name of an API error code (`serverError` → `server_error`).
    static func name(of code: NymbleAPIError.Code) -> String {
        var name = ""
        for character in code.description {
            if character.isUppercase { name += "_" + character.lowercased() } else { name.append(character) }
        }
        return name
    }

    func recordCall(_ code: NymbleAPIError.Code?, duration: Duration) {
        calls[code.map(Self.name(of:)) ?? "ok"]?.increment()
        if code == .rateLimited { throttled.increment() }
        callDuration.recordNanoseconds(duration.inNanoseconds)
    }

    func recordError(_ reason: String) { errors[reason]?.increment() }

    func recordWritten(done: Int, failed: Int, retried: Int) {
        if done > 0 { items["done"]?.increment(by: done) }
        if failed > 0 { items["failed"]?.increment(by: failed) }
        if retried > 0 { items["retried"]?.increment(by: retried) }
    }

    /// The process's login total so far (the counter grows by the difference).
    private func recordLoginTotal(_ total: Int) {
        let delta = loginsReported.withLock { reported in
            defer { reported = max(reported, total) }
            return total - reported
        }
        if delta > 0 { logins.increment(by: delta) }
    }

    /// Refreshes the gauges (and the login counter) when metrics are on: rows per queue state (a query, best
    /// effort: a gauge is not worth failing the run for), logins so far and the throttle's rate.
    func refresh(counts: QueueCounts?, logins: Int, rate: @autoclosure () async -> Double?) async {
        guard isEnabled else { return }
        if let counts {
            for (state, gauge) in queueItems { gauge.record(counts[state]) }
        }
        recordLoginTotal(logins)
        throttleRate.record(await rate() ?? 0)
    }

    /// Refreshes the fleet's gauges (live workers, the shared token's generation, expiry and logins of the
    /// last hour, the fleet-wide pause) when metrics are on; `status` is read only then.
    func refresh(fleet status: @autoclosure () async -> FleetStatus?) async {
        guard isEnabled, let fleet = await status() else { return }
        fleetWorkers.record(fleet.workers.count)
        if let token = fleet.tokens.first {
            fleetTokenGeneration.record(token.generation)
            fleetTokenExpiresIn.record(max(0, token.expiresInSeconds ?? 0))
            fleetLoginsLastHour.record(token.loginsLastHour)
        }
        fleetPaused.record(fleet.budgets.map(\.pausedForSeconds).max() ?? 0)
        // 0 while unlimited (no 429 yet) or while no leader is alive.
        fleetSharedRate.record(fleet.budgets.compactMap(\.sharedRate).min() ?? 0)
    }
}
