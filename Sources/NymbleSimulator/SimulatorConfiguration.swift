import Foundation
import NymbleAPI

/// Everything the simulator can be told. All faults and limits beyond the documented login limit are off
/// by default, so a default simulator is the API on a good day.
public struct SimulatorConfiguration: Sendable {
    /// How a 429 from the enrichment call (`/access` and its equivalents) states when to come back.
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
    /// Which API the simulator speaks (`../shared/api-contract.md`): Nymble (section 1, the default), the B2B
    /// password-login API (section 2) or AchieveApex (section 3). Each serves only its own login and enrichment
    /// routes; `GET /_stats` and `POST /_admin/revoke` are served by all three.
    public var dialect: APIDialect = .nymble
    /// The credentials the simulator accepts.
    public var orgCode: String = "org_12345"
    public var clientId: String = "sdaf43tfsdg45dg"
    public var clientSecret: String = "QsFdas%4F1asr23tgb675%3"
    /// The username the B2B dialect accepts on `POST /auth/login`.
    public var username: String = "svc_enrich"
    /// The email the AchieveApex dialect accepts on `POST /authentication` (`local` strategy).
    public var email: String = "enrich@example.com"
    /// The password the B2B and AchieveApex dialects accept.
    public var password: String = "b2b-Pa55word!"
    /// Lifetime of issued access tokens, in every dialect: Nymble's `ExpiresIn` (the vendor's default is
    /// 86,400 seconds), B2B's `access_expires_at` (now plus this, down to the second), AchieveApex's JWT `exp`
    /// (`iat` plus this in whole seconds). A token stops being valid when its lifetime is over.
    public var tokenLifetime: Duration = .seconds(86_400)
    /// Lifetime of B2B refresh tokens (`refresh_expires_at`, now plus this, down to the second).
    public var refreshTokenLifetime: Duration = .seconds(7 * 86_400)
    /// Logins allowed in any 60 seconds per ClientId, B2B username or AchieveApex email (Nymble documents 10
    /// per minute). B2B refreshes and AchieveApex `jwt` re-authentications are not logins.
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
