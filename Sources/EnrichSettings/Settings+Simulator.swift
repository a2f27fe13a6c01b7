import EnrichCore
import NymbleAPI
import NymbleSimulator

extension SettingKind where Value == Double {
    /// A share from 0 to 1.
    public static var share: Self {
        Self(expectation: "a share from 0 to 1", valueName: "share", jsonType: .number) { text in
            Double(text).flatMap { (0...1).contains($0) ? $0 : nil }
        }
    }
}

extension SettingKind where Value == SimulatorConfiguration.Latency {
    /// `0`, `50ms`, `1.5s`, or a uniform range `20ms-80ms` (a single delay when `range` is false).
    public static func latency(range: Bool) -> Self {
        Self(
            expectation: range ? "a delay like 0, 50ms, 1.5s or a range 20ms-80ms" : "a delay like 500ms or 2s",
            valueName: "delay",
            jsonType: .string
        ) { text in
            SimulatorConfiguration.Latency(text).flatMap { range || $0.minimum == $0.maximum ? $0 : nil }
        }
    }
}

extension Settings {
    /// The settings of `enrich simulate` (the simulator of the Nymble API, and of the B2B and AchieveApex
    /// dialects, for tests, the demo, benchmarks).
    public enum Simulator {
        private static let simulator = SimulatorConfiguration()

        public static let host = Setting(
            "host",
            environment: "ENRICH_SIM_HOST",
            kind: .text(valueName: "host"),
            default: simulator.host,
            help: "address to bind",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let port = Setting(
            "port",
            environment: "ENRICH_SIM_PORT",
            kind: .count(0...65_535, valueName: "port"),
            default: "8080",
            help: "port to bind, 0 for any free port (the URL is printed)",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let dialect = Setting(
            "dialect",
            environment: "ENRICH_SIM_DIALECT",
            kind: .choice(APIDialect.allCases.map(\.rawValue)),
            default: simulator.dialect.rawValue,
            help: "API to speak: nymble (/api/auth/login, /api/auth/access), b2b (/auth/login, /auth/refresh, "
                + "/api/v2/commerce/lookup) or achieveapex (/authentication, /commerce-context)",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let orgCode = Setting(
            "org-code",
            environment: "NYMBLE_ORG_CODE",
            kind: .text(valueName: "code"),
            default: simulator.orgCode,
            help: "accepted OrgCode",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let clientID = Setting(
            "client-id",
            environment: "NYMBLE_CLIENT_ID",
            kind: .text(valueName: "id"),
            default: simulator.clientId,
            help: "accepted ClientId",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let clientSecret = Setting(
            "client-secret",
            environment: "NYMBLE_CLIENT_SECRET",
            kind: .text(valueName: "secret"),
            default: "the contract's example",
            help: "accepted ClientSecret (a test credential: a flag is allowed here)",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let username = Setting(
            "username",
            environment: "B2B_USERNAME",
            kind: .text(valueName: "name"),
            default: simulator.username,
            help: "accepted B2B username (dialect b2b)",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let email = Setting(
            "email",
            environment: "APEX_EMAIL",
            kind: .text(valueName: "email"),
            default: simulator.email,
            help: "accepted AchieveApex email (dialect achieveapex)",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let password = Setting(
            "password",
            environment: "API_PASSWORD",
            kind: .text(valueName: "password"),
            default: simulator.password,
            help: "accepted password of the b2b and achieveapex dialects (a test credential)",
            group: .simulator,
            sources: .environmentOnly
        )
        public static let tokenLifetime = Setting(
            "token-lifetime",
            environment: "ENRICH_SIM_TOKEN_LIFETIME",
            kind: .seconds(),
            default: String(Int(simulator.tokenLifetime.inSeconds)),
            help: "lifetime of issued access tokens, in seconds (ExpiresIn, access_expires_at, the JWT's exp)",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let refreshLifetime = Setting(
            "refresh-lifetime",
            environment: "ENRICH_SIM_REFRESH_LIFETIME",
            kind: .seconds(),
            default: String(Int(simulator.refreshTokenLifetime.inSeconds)),
            help: "lifetime of issued B2B refresh tokens, in seconds",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let loginsPerMinute = Setting(
            "logins-per-minute",
            environment: "ENRICH_SIM_LOGINS_PER_MINUTE",
            kind: .count(1...10_000),
            default: "\(simulator.loginsPerMinute)",
            help: "logins allowed per minute per ClientId, username or email",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let rate = Setting(
            "rate",
            environment: "ENRICH_SIM_RATE",
            kind: .positiveNumber(valueName: "req/s"),
            default: "unlimited",
            help: "limit /access to this many requests per second, answering 429 beyond it",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let burst = Setting(
            "burst",
            environment: "ENRICH_SIM_BURST",
            kind: .positiveNumber(valueName: "n"),
            default: "1 s of rate",
            help: "burst size of the /access limit, in requests",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let retryAfter = Setting(
            "retry-after",
            environment: "ENRICH_SIM_RETRY_AFTER",
            kind: .choice(["seconds", "http-date", "none"]),
            default: "seconds",
            help: "Retry-After form on 429",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let latency = Setting(
            "latency",
            environment: "ENRICH_SIM_LATENCY",
            kind: .latency(range: true),
            default: "0",
            help: "delay before each answer",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let errorRate = Setting(
            "error-rate",
            environment: "ENRICH_SIM_ERROR_RATE",
            kind: .share,
            default: "0",
            help: "share of /access calls answered 500/502/503",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let dropRate = Setting(
            "drop-rate",
            environment: "ENRICH_SIM_DROP_RATE",
            kind: .share,
            default: "0",
            help: "share of /access calls whose connection is dropped",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let slowRate = Setting(
            "slow-rate",
            environment: "ENRICH_SIM_SLOW_RATE",
            kind: .share,
            default: "0",
            help: "share of /access calls delayed by the slow delay",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let slowDelay = Setting(
            "slow-delay",
            environment: "ENRICH_SIM_SLOW_DELAY",
            kind: .latency(range: false),
            default: "2s",
            help: "extra delay of slow answers",
            group: .simulator,
            sources: .flagAndEnvironment
        )
        public static let recordTimes = Setting(
            "record-times",
            environment: "ENRICH_SIM_RECORD_TIMES",
            kind: .flag,
            default: "off",
            help: "record login times and each UserId's first /access arrival in GET /_stats (benchmarks)",
            group: .simulator,
            sources: .flagAndEnvironment
        )

        /// Every setting of `enrich simulate`, its log level included.
        public static let all: [any AnySetting] = [
            host, port, dialect, orgCode, clientID, clientSecret, username, email, password, tokenLifetime,
            refreshLifetime, loginsPerMinute, rate, burst, retryAfter, latency, errorRate, dropRate, slowRate,
            slowDelay, recordTimes, Settings.logLevel,
        ]
    }
}

extension SettingSources {
    /// The simulator's configuration (flag > environment > default).
    public func simulatorConfiguration() throws -> SimulatorConfiguration {
        typealias S = Settings.Simulator
        var configuration = SimulatorConfiguration()
        configuration.host = try value(S.host) ?? configuration.host
        configuration.port = try value(S.port) ?? 8080
        configuration.dialect = try value(S.dialect).flatMap(APIDialect.init(rawValue:)) ?? configuration.dialect
        configuration.orgCode = try value(S.orgCode) ?? configuration.orgCode
        configuration.clientId = try value(S.clientID) ?? configuration.clientId
        configuration.clientSecret = try value(S.clientSecret) ?? configuration.clientSecret
        configuration.username = try value(S.username) ?? configuration.username
        configuration.email = try value(S.email) ?? configuration.email
        configuration.password = try value(S.password) ?? configuration.password
        configuration.tokenLifetime = try value(S.tokenLifetime) ?? configuration.tokenLifetime
        configuration.refreshTokenLifetime = try value(S.refreshLifetime) ?? configuration.refreshTokenLifetime
        configuration.loginsPerMinute = try value(S.loginsPerMinute) ?? configuration.loginsPerMinute
        configuration.accessRate = try value(S.rate)
        configuration.accessBurst = try value(S.burst)
        configuration.retryAfterStyle =
            try value(S.retryAfter).flatMap(SimulatorConfiguration.RetryAfterStyle.init)
            ?? configuration.retryAfterStyle
        configuration.latency = try value(S.latency) ?? configuration.latency
        configuration.serverErrorRate = try value(S.errorRate) ?? 0
        configuration.dropRate = try value(S.dropRate) ?? 0
        configuration.slowRate = try value(S.slowRate) ?? 0
        configuration.slowDelay = try value(S.slowDelay)?.minimum ?? configuration.slowDelay
        configuration.recordTimes = try value(S.recordTimes) ?? false
        return configuration
    }
}
