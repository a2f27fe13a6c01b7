import Foundation

/// Everything the simulator can be told. All faults and limits beyond the documented login limit are off
/// by default, so a default simulator is the API on a good day.
public struct SimulatorConfiguration: Sendable {
    /// How a 429 from `/access` states when to come back.
    public struct RetryAfterStyle: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable {
            case seconds
            case httpDate = "http-date"
            case absent = "none"
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// `Retry-After: 2` (delta-seconds, rounded up).
        public static let seconds = Self(.seconds)
        /// `Retry-After: Tue, 24 Nov 2026 08:00:02 GMT`.
        public static let httpDate = Self(.httpDate)
        /// No Retry-After header at all.
        public static let absent = Self(.absent)
        /// Parses `seconds`, `http-date` or `none`.
        public init?(_ text: String) {
            guard let base = Base(rawValue: text.lowercased()) else { return nil }
            self.base = base
        }
        public var description: String { base.rawValue }
    }

    /// A response delay: fixed, or uniform in a range.
    public struct Latency: Sendable, Hashable, CustomStringConvertible {
        public var minimum: Duration
        public var maximum: Duration
        public static let none = Latency(minimum: .zero, maximum: .zero)
        public init(minimum: Duration, maximum: Duration) {
            self.minimum = minimum
            self.maximum = max(minimum, maximum)
        }
        public static func fixed(_ delay: Duration) -> Latency { Latency(minimum: delay, maximum: delay) }

        /// Parses `0`, `50ms`, `1.5s`, or a uniform range `20ms-80ms`.
        public init?(_ text: String) {
            let parts = text.split(separator: "-", maxSplits: 1).map(String.init)
            guard let low = Self.parseDuration(parts[0]) else { return nil }
            if parts.count == 2 {
                guard let high = Self.parseDuration(parts[1]), high >= low else { return nil }
                self.init(minimum: low, maximum: high)
            } else {
                self.init(minimum: low, maximum: low)
            }
        }

        static func parseDuration(_ text: String) -> Duration? {
            let text = text.trimmingCharacters(in: .whitespaces).lowercased()
            if text == "0" { return .zero }
            for (suffix, scale) in [("ms", 0.001), ("us", 0.000_001), ("s", 1.0)] where text.hasSuffix(suffix) {
                guard let value = Double(text.dropLast(suffix.count)), value >= 0 else { return nil }
                return .seconds(value * scale)
            }
            return nil
        }

        public var description: String {
            minimum == maximum ? "\(minimum)" : "\(minimum)-\(maximum)"
        }
    }

    /// Host to bind (loopback by default).
    public var host: String = "127.0.0.1"
    /// Port to bind; 0 picks a free one (published through `onListening`).
    public var port: Int = 0
    /// The credentials the simulator accepts.
    public var orgCode: String = "org_12345"
    public var clientId: String = "sdaf43tfsdg45dg"
    public var clientSecret: String = "QsFdas%4F1asr23tgb675%3"
    /// `ExpiresIn` of issued tokens, in seconds (the vendor's default is 86,400).
    public var tokenLifetime: Duration = .seconds(86_400)
    /// Logins allowed per minute per ClientId (documented: 10).
    public var loginsPerMinute: Int = 10
    /// `/access` token bucket: sustained requests per second; nil = unlimited.
    public var accessRate: Double? = nil
    /// `/access` token bucket size (requests allowed in a burst); default: one second of `accessRate`.
    public var accessBurst: Double? = nil
    /// Retry-After form on `/access` 429s.
    public var retryAfterStyle: RetryAfterStyle = .seconds
    /// Delay before each answer.
    public var latency: Latency = .none
    /// Share (0...1) of valid `/access` calls answered 500/502/503.
    public var serverErrorRate: Double = 0
    /// Share (0...1) of valid `/access` calls whose connection is dropped without an answer.
    public var dropRate: Double = 0
    /// Share (0...1) of `/access` calls delayed by ``slowDelay`` on top of the latency.
    public var slowRate: Double = 0
    /// Extra delay of slow answers.
    public var slowDelay: Duration = .seconds(2)
    /// Record login times and `/access` arrival times in the stats (benchmarks; off by default).
    public var recordTimes = false

    public init() {}
}
