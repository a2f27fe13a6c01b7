import EnrichCore
import EnrichQueue
import EnrichWorker
import NymbleAPI

/// Every setting of enrich, described once (see ``Setting``). Defaults come from the configuration types'
/// own defaults, so a default is written in one place too.
public enum Settings {
    private static let worker = WorkerConfiguration()
    private static let client = NymbleClientConfiguration()

    private static func seconds(_ duration: Duration) -> String {
        let value = duration.inSeconds
        return value == value.rounded() ? String(Int(value)) : String(value)
    }

    // MARK: Database

    public static let databaseURL = Setting(
        "database-url",
        environment: "DATABASE_URL",
        kind: .text(valueName: "url"),
        default: "—",
        help: "PostgreSQL URL, postgres://user:password@host:port/db?sslmode=prefer (sslmode disable, allow, "
            + "prefer, require, verify-ca, verify-full; ?host=/run/postgresql for a Unix socket)",
        group: .database,
        sources: .flagAndEnvironment
    )
    public static let schema = Setting(
        "schema",
        environment: "ENRICH_SCHEMA",
        kind: .text(valueName: "name"),
        default: "enrich",
        help: "schema holding enrich's tables",
        group: .database,
        sources: .flagAndEnvironment
    )
    public static let databaseConnections = Setting(
        "db-connections",
        environment: "ENRICH_DB_CONNECTIONS",
        kind: .count(1...1000),
        default: "8",
        help: "pooled database connections",
        group: .database,
        sources: .flagAndEnvironment
    )
    public static let statementTimeout = Setting(
        "statement-timeout",
        environment: "ENRICH_STATEMENT_TIMEOUT",
        kind: .seconds(),
        default: "30",
        help: "seconds a database statement (or a wait for a connection) may take before it is given up",
        group: .database,
        sources: .flagAndEnvironment
    )
    public static let preparedStatements = Setting(
        "prepared-statements",
        environment: "ENRICH_PREPARED_STATEMENTS",
        kind: .choice(["on", "off"]),
        default: "on",
        help: "prepare the claim and the write-back once per connection (off: behind a pooler that cannot keep "
            + "them, such as PgBouncer in transaction mode without max_prepared_statements)",
        group: .database,
        sources: .flagAndEnvironment
    )

    // MARK: Logging

    public static let logLevel = Setting(
        "log-level",
        environment: "ENRICH_LOG_LEVEL",
        kind: .choice(["trace", "debug", "info", "notice", "warning", "error", "critical"]),
        default: "info",
        help: "log level",
        group: .logging,
        sources: .flagAndEnvironment
    )
    public static let logFormat = Setting(
        "log-format",
        environment: "ENRICH_LOG_FORMAT",
        kind: .choice(["text", "json"]),
        default: "text",
        help: "log lines on standard error: text, or one JSON object per line",
        group: .logging,
        sources: .flagAndEnvironment
    )

    // MARK: API

    public static let apiURL = Setting(
        "api-url",
        environment: "NYMBLE_BASE_URL",
        kind: .text(valueName: "url"),
        default: client.baseURL,
        help: "base URL of the API (of any dialect; required for b2b and achieveapex)",
        group: .api
    )
    public static let orgCode = Setting(
        "org-code",
        environment: "NYMBLE_ORG_CODE",
        kind: .text(valueName: "code"),
        default: "—",
        help: "OrgCode of the API credentials",
        group: .api,
        sources: .flagAndEnvironment
    )
    public static let clientID = Setting(
        "client-id",
        environment: "NYMBLE_CLIENT_ID",
        kind: .text(valueName: "id"),
        default: "—",
        help: "ClientId of the API credentials",
        group: .api,
        sources: .flagAndEnvironment
    )
    public static let clientSecret = Setting(
        "client-secret",
        environment: "NYMBLE_CLIENT_SECRET",
        kind: .text(valueName: "secret"),
        default: "—",
        help: "ClientSecret (environment only, or NYMBLE_CLIENT_SECRET_FILE: never a flag, so it never shows in ps)",
        group: .api,
        sources: .environmentOnly
    )
    public static let dialect = Setting(
        "dialect",
        environment: "ENRICH_API_DIALECT",
        kind: .choice(APIDialect.allCases.map(\.rawValue)),
        default: APIDialect.nymble.rawValue,
        help: "how the API logs in: nymble (OrgCode, ClientId, ClientSecret), b2b (username, password, refresh "
            + "token) or achieveapex (email, password, JWT)",
        group: .api
    )
    public static let username = Setting(
        "username",
        environment: "B2B_USERNAME",
        kind: .text(valueName: "name"),
        default: "—",
        help: "login username of the b2b dialect",
        group: .api
    )
    public static let email = Setting(
        "email",
        environment: "APEX_EMAIL",
        kind: .text(valueName: "email"),
        default: "—",
        help: "login email of the achieveapex dialect",
        group: .api
    )
    public static let password = Setting(
        "password",
        environment: "API_PASSWORD",
        kind: .text(valueName: "password"),
        default: "—",
        help: "password of the b2b and achieveapex dialects (environment only, or API_PASSWORD_FILE)",
        group: .api,
        sources: .environmentOnly
    )
    public static let refreshPath = Setting(
        "refresh-path",
        environment: "ENRICH_REFRESH_PATH",
        kind: .urlPath,
        default: B2BDialect.defaultRefreshPath,
        help: "b2b: the refresh endpoint, posted {\"refresh_token\": ...} (the API's contract names none)",
        group: .api
    )
    public static let callMethod = Setting(
        "call-method",
        environment: "ENRICH_CALL_METHOD",
        kind: .choice(EnrichmentCall.Method.allCases.map { $0.rawValue.lowercased() }),
        default: client.call.method.rawValue.lowercased(),
        help: "the enrichment call's method: the pair in a JSON body, or in the query string for get",
        group: .api
    )
    public static let callPath = Setting(
        "call-path",
        environment: "ENRICH_CALL_PATH",
        kind: .urlPath,
        default: "\(client.call.path) (nymble)",
        help: "the enrichment call's path under the base URL; for b2b and achieveapex, it and every call-* and "
            + "answer-* name are required",
        group: .api
    )
    public static let callOrganizationField = Setting(
        "call-organization-field",
        environment: "ENRICH_CALL_ORGANIZATION_FIELD",
        kind: .text(valueName: "name"),
        default: client.call.organizationField,
        help: "the request's name for the pair's OrganizationId",
        group: .api
    )
    public static let callUserField = Setting(
        "call-user-field",
        environment: "ENRICH_CALL_USER_FIELD",
        kind: .text(valueName: "name"),
        default: client.call.userField,
        help: "the request's name for the pair's UserId",
        group: .api
    )
    public static let answerCustomerNumber = Setting(
        "answer-customer-number",
        environment: "ENRICH_ANSWER_CUSTOMER_NUMBER",
        kind: .text(valueName: "name"),
        default: client.call.answer.customerNumber,
        help: "the answer's member written as customer_number (a string or null)",
        group: .api
    )
    public static let answerPriceTier = Setting(
        "answer-price-tier",
        environment: "ENRICH_ANSWER_PRICE_TIER",
        kind: .text(valueName: "name"),
        default: client.call.answer.priceTier,
        help: "the answer's member written as price_tier (a string or null)",
        group: .api
    )
    public static let answerCurrencyCode = Setting(
        "answer-currency-code",
        environment: "ENRICH_ANSWER_CURRENCY_CODE",
        kind: .text(valueName: "name"),
        default: client.call.answer.currencyCode,
        help: "the answer's member written as currency_code (a string or null)",
        group: .api
    )
    public static let requestTimeout = Setting(
        "request-timeout",
        environment: "ENRICH_REQUEST_TIMEOUT",
        kind: .seconds(),
        default: seconds(client.requestTimeout),
        help: "seconds one API request may take",
        group: .api
    )

    // MARK: Run

    public static let follow = Setting(
        "follow",
        environment: "ENRICH_FOLLOW",
        kind: .flag,
        default: "off",
        help: "keep running and wake on new work (LISTEN/NOTIFY) instead of exiting when the queue is drained",
        group: .run,
        sources: .flagAndEnvironment
    )
    public static let solo = Setting(
        "solo",
        environment: "ENRICH_SOLO",
        kind: .flag,
        default: "off",
        help: "use a token and a throttle of its own, not those the workers of the schema share (the fleet)",
        group: .run,
        sources: .flagAndEnvironment
    )
    public static let targetSQL = Setting(
        "target-sql",
        environment: "ENRICH_TARGET_SQL",
        kind: .text(valueName: "sql"),
        default: "—",
        help: "SQL that receives each written batch of results in the same transaction as the queue: text arrays "
            + "$1 OrganizationId, $2 UserId, $3 CustomerNumber, $4 PriceTier, $5 CurrencyCode (nulls kept), used as "
            + "unnest($1::text[], ...); a job file gives it as \"target\": {\"sql\": ...}; checked before the run",
        group: .run,
        sources: .flagAndEnvironment
    )
    public static let concurrency = Setting(
        "concurrency",
        environment: "ENRICH_CONCURRENCY",
        kind: .count(1...4096),
        default: "\(worker.concurrency)",
        help: "concurrent API calls",
        group: .run
    )
    public static let rate = Setting(
        "rate",
        environment: "ENRICH_RATE",
        kind: .positiveNumber(valueName: "req/s"),
        default: "adaptive",
        help: "known API rate limit in requests per second; without it the rate adapts to 429s",
        group: .run
    )
    public static let maxAttempts = Setting(
        "max-attempts",
        environment: "ENRICH_MAX_ATTEMPTS",
        kind: .count32(atLeast: 1),
        default: "the row's own",
        help: "calls per row before it is marked failed, overriding the value set at enqueue (default 5)",
        group: .run
    )
    public static let claimBatch = Setting(
        "claim-batch",
        environment: "ENRICH_CLAIM_BATCH",
        kind: .count(1...10_000, valueName: "rows"),
        default: "2 × concurrency, ≥ 2000",
        help: "most rows one claim leases (the run holds about a second of work up to this)",
        group: .run
    )
    public static let maxTakeovers = Setting(
        "max-takeovers",
        environment: "ENRICH_MAX_TAKEOVERS",
        kind: .count32(atLeast: 1),
        default: "\(worker.maxTakeovers)",
        help: "takeovers from workers that stopped while holding a row before the row is failed",
        group: .run
    )
    public static let lease = Setting(
        "lease",
        environment: "ENRICH_LEASE",
        kind: .seconds(),
        default: seconds(worker.lease),
        help: "seconds a claimed row stays leased without a heartbeat (at least 5)",
        group: .run
    )
    public static let heartbeat = Setting(
        "heartbeat",
        environment: "ENRICH_HEARTBEAT",
        kind: .seconds(),
        default: seconds(worker.heartbeatInterval),
        help: "seconds between heartbeats (run record, liveness, lease extension); under half the lease",
        group: .run
    )
    public static let pollInterval = Setting(
        "poll-interval",
        environment: "ENRICH_POLL_INTERVAL",
        kind: .seconds(),
        default: seconds(worker.pollInterval),
        help: "seconds between looks for new or due rows without a NOTIFY",
        group: .run
    )
    public static let shutdownGrace = Setting(
        "shutdown-grace",
        environment: "ENRICH_SHUTDOWN_GRACE",
        kind: .seconds(allowZero: true),
        default: seconds(worker.shutdownGrace),
        help: "seconds in-flight calls may take after SIGINT/SIGTERM; the process is gone within it + 5 s",
        group: .run
    )
    public static let databaseOutageLimit = Setting(
        "db-outage-limit",
        environment: "ENRICH_DB_OUTAGE_LIMIT",
        kind: .seconds(allowZero: true),
        default: seconds(worker.databaseOutageLimit),
        help: "seconds the database may be unreachable before the run fails",
        group: .run
    )
    public static let staleAfter = Setting(
        "stale-after",
        environment: "ENRICH_STALE_AFTER",
        kind: .seconds(),
        default: seconds(worker.staleAfter),
        help: "seconds without a heartbeat after which a running run without a liveness lock is dead (never "
            + "less than the outage limit + 2 heartbeats)",
        group: .run
    )
    public static let stallTimeout = Setting(
        "stall-timeout",
        environment: "ENRICH_STALL_TIMEOUT",
        kind: .seconds(allowZero: true),
        default: seconds(worker.stallTimeout),
        help: "seconds a run may hold rows without completing any before it stops (0: never)",
        group: .run
    )
    public static let retryBase = Setting(
        "retry-base",
        environment: "ENRICH_RETRY_BASE",
        kind: .seconds(),
        default: seconds(worker.retryBackoff.base),
        help: "backoff ceiling of a row's first retry after a 5xx or timeout; doubles per attempt, full jitter",
        group: .run
    )
    public static let retryCap = Setting(
        "retry-cap",
        environment: "ENRICH_RETRY_CAP",
        kind: .seconds(),
        default: seconds(worker.retryBackoff.cap),
        help: "longest retry backoff (at least the retry base)",
        group: .run
    )
    public static let writeBatch = Setting(
        "write-batch",
        environment: "ENRICH_WRITE_BATCH",
        kind: .count(1...10_000, valueName: "rows"),
        default: "\(worker.writeBatch)",
        help: "results written back per statement (or after 10 ms, whichever comes first)",
        group: .run
    )
    public static let maxPause = Setting(
        "max-pause",
        environment: "ENRICH_MAX_PAUSE",
        kind: .seconds(),
        default: seconds(worker.maximumPause),
        help: "longest pause honoured from a 429's Retry-After",
        group: .run
    )
    public static let jobName = Setting(
        "job-name",
        environment: "ENRICH_JOB_NAME",
        kind: .text(valueName: "name"),
        default: worker.jobName,
        help: "name recorded in job_runs (a --job run is recorded under its job's name)",
        group: .run,
        sources: .flagAndEnvironment
    )
    public static let trigger = Setting(
        "trigger",
        environment: "ENRICH_TRIGGER",
        kind: .choice(["cli", "cron"]),
        default: "cli",
        help: "how the run was started, recorded in job_runs",
        group: .run,
        sources: .flagAndEnvironment
    )

    // MARK: Output and monitoring

    public static let progress = Setting(
        "progress",
        environment: "ENRICH_PROGRESS",
        kind: .choice(["auto", "line", "log", "off"]),
        default: "auto",
        help: "auto (a live line on a terminal, log lines otherwise), line, log or off",
        group: .output,
        sources: .flagAndEnvironment
    )
    public static let progressLogInterval = Setting(
        "progress-log-interval",
        environment: "ENRICH_PROGRESS_LOG_INTERVAL",
        kind: .seconds(),
        default: "10",
        help: "seconds between progress log lines when not on a terminal",
        group: .output
    )
    public static let metricsPort = Setting(
        "metrics-port",
        environment: "ENRICH_METRICS_PORT",
        kind: .count(0...65_535, valueName: "port"),
        default: "off",
        help: "serve Prometheus metrics on this port at /metrics, and the status page at / (0: any free port)",
        group: .output,
        sources: .flagAndEnvironment
    )
    public static let metricsHost = Setting(
        "metrics-host",
        environment: "ENRICH_METRICS_HOST",
        kind: .text(valueName: "address"),
        default: "127.0.0.1",
        help: "address the metrics endpoint and status page bind; any other than 127.0.0.1 exposes them: put "
            + "authentication in front (README)",
        group: .output,
        sources: .flagAndEnvironment
    )

    public static let maxAge = Setting(
        "max-age",
        environment: "ENRICH_MAX_AGE",
        kind: .humanDuration,
        default: "no limit",
        help: "status --check: a problem when the last run started longer ago than this",
        group: .output,
        sources: .flagAndEnvironment
    )

    // MARK: Jobs

    public static let job = Setting(
        "job",
        environment: "ENRICH_JOB",
        kind: .text(valueName: "name|path"),
        default: "—",
        help: "run a job definition: a name (looked up as <jobs-dir>/NAME.json) or a path; its source is "
            + "enqueued, then drained, as one run under the job's lock",
        group: .job,
        sources: .flagAndEnvironment
    )
    public static let jobsDirectory = Setting(
        "jobs-dir",
        environment: "ENRICH_JOBS_DIR",
        kind: .text(valueName: "dir"),
        default: "jobs",
        help: "where --job looks up names",
        group: .job,
        sources: .flagAndEnvironment
    )

    /// The database and logging settings every command that uses the database reads.
    public static let database: [any AnySetting] = [
        databaseURL, schema, databaseConnections, statementTimeout, preparedStatements, logLevel, logFormat,
    ]

    /// The settings `enrich run` reads besides ``database``.
    public static let run: [any AnySetting] = [
        apiURL, dialect, orgCode, clientID, clientSecret, username, email, password, refreshPath, callMethod, callPath,
        callOrganizationField, callUserField, answerCustomerNumber, answerPriceTier, answerCurrencyCode,
        requestTimeout, follow, solo, targetSQL, concurrency, rate,
        maxAttempts,
        claimBatch,
        maxTakeovers, lease, heartbeat, pollInterval, shutdownGrace, databaseOutageLimit, staleAfter, stallTimeout,
        retryBase, retryCap, writeBatch, maxPause, jobName, trigger, progress, progressLogInterval, metricsPort,
        metricsHost, job, jobsDirectory,
    ]

    /// The settings `enrich status --check` reads besides ``database`` (and ``staleAfter``).
    public static let status: [any AnySetting] = [maxAge]

    /// Every setting.
    public static var all: [any AnySetting] { database + run + status }
}
