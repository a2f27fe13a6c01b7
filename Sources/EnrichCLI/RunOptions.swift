import ArgumentParser
import EnrichQueue
import EnrichThrottle
import EnrichToken
import EnrichWorker
import Foundation
import NymbleAPI

/// The flags of `enrich run`; each one also reads the environment variable named in its help.
struct RunOptions: ParsableArguments {
    @Flag(
        help: "Keep running and wait for new work instead of exiting when the queue is drained (env ENRICH_FOLLOW=1)."
    )
    var follow = false

    @Option(help: ArgumentHelp("Concurrent API calls (env ENRICH_CONCURRENCY; default 32).", valueName: "n"))
    var concurrency: Int?

    @Option(
        help: ArgumentHelp(
            "Known API rate limit in requests per second; without it the rate adapts to 429s (env ENRICH_RATE).",
            valueName: "req/s"
        )
    )
    var rate: Double?

    @Option(
        name: .customLong("max-attempts"),
        help: ArgumentHelp(
            "Attempts per row before it is marked failed, overriding the value set at enqueue (env ENRICH_MAX_ATTEMPTS).",
            valueName: "n"
        )
    )
    var maxAttempts: Int32?

    @Option(
        name: .customLong("claim-batch"),
        help: ArgumentHelp(
            "Rows leased per claim (env ENRICH_CLAIM_BATCH; default twice --concurrency, at least 500).",
            valueName: "rows"
        )
    )
    var claimBatch: Int?

    @Option(
        help: ArgumentHelp(
            "Lease of a claimed row, in seconds; extended while the run lives (env ENRICH_LEASE; default 120).",
            valueName: "seconds"
        )
    )
    var lease: Double?

    @Option(
        help: ArgumentHelp(
            "Interval of the job runs heartbeat and lease extension, in seconds (env ENRICH_HEARTBEAT; default 5).",
            valueName: "seconds"
        )
    )
    var heartbeat: Double?

    @Option(
        name: .customLong("poll-interval"),
        help: ArgumentHelp(
            "Look for new or due rows at least this often, in seconds (env ENRICH_POLL_INTERVAL; default 5).",
            valueName: "seconds"
        )
    )
    var pollInterval: Double?

    @Option(
        name: .customLong("shutdown-grace"),
        help: ArgumentHelp(
            "After SIGINT/SIGTERM, seconds in-flight calls may take before they are cancelled (env ENRICH_SHUTDOWN_GRACE; default 30).",
            valueName: "seconds"
        )
    )
    var shutdownGrace: Double?

    @Option(
        name: .customLong("db-outage-limit"),
        help: ArgumentHelp(
            "Seconds the database may stay unreachable before the run stops as failed (env ENRICH_DB_OUTAGE_LIMIT; default 60).",
            valueName: "seconds"
        )
    )
    var databaseOutageLimit: Double?

    @Option(
        name: .customLong("retry-base"),
        help: ArgumentHelp(
            "Backoff ceiling of a row's first retry after a 5xx/timeout, in seconds; doubles per attempt, full jitter (env ENRICH_RETRY_BASE; default 1).",
            valueName: "seconds"
        )
    )
    var retryBase: Double?

    @Option(
        name: .customLong("retry-cap"),
        help: ArgumentHelp(
            "Longest retry backoff, in seconds (env ENRICH_RETRY_CAP; default 60).",
            valueName: "seconds"
        )
    )
    var retryCap: Double?

    @Option(
        name: .customLong("request-timeout"),
        help: ArgumentHelp(
            "Timeout of one API request, in seconds (env ENRICH_REQUEST_TIMEOUT; default 30).",
            valueName: "seconds"
        )
    )
    var requestTimeout: Double?

    @Option(
        name: .customLong("job-name"),
        help: ArgumentHelp(
            "Name recorded in the job runs table (env ENRICH_JOB_NAME; default default).",
            valueName: "name"
        )
    )
    var jobName: String?

    @Option(
        help: ArgumentHelp("cli or cron, recorded with the run (env ENRICH_TRIGGER; default cli).", valueName: "how")
    )
    var trigger: String?

    @Option(
        help: ArgumentHelp(
            "auto (a live line on a terminal, log lines otherwise), line, log or off (env ENRICH_PROGRESS; default auto).",
            valueName: "mode"
        )
    )
    var progress: String?

    @Option(
        name: .customLong("progress-log-interval"),
        help: ArgumentHelp(
            "Seconds between progress log lines when not on a terminal (env ENRICH_PROGRESS_LOG_INTERVAL; default 10).",
            valueName: "seconds"
        )
    )
    var progressLogInterval: Double?

    @Option(
        name: .customLong("api-url"),
        help: ArgumentHelp(
            "Base URL of the Nymble API (env NYMBLE_BASE_URL; default https://api.achievemomentum.com).",
            valueName: "url"
        )
    )
    var apiURL: String?

    @Option(
        help: ArgumentHelp(
            "Run a job from jobs/: a name (looked up as --jobs-dir/NAME.json) or a path. Its source is enqueued, then drained, as one run under the job's lock; its settings apply where no flag or variable is given (env ENRICH_JOB).",
            valueName: "name|path"
        )
    )
    var job: String?

    @Option(
        name: .customLong("jobs-dir"),
        help: ArgumentHelp("Where --job looks up names (env ENRICH_JOBS_DIR; default jobs).", valueName: "dir")
    )
    var jobsDirectory: String?

    @Option(
        name: .customLong("stale-after"),
        help: ArgumentHelp(
            "A running run without a liveness lock (an older enrich) whose heartbeat is older than this many seconds is marked abandoned; never less than --db-outage-limit + 2 heartbeats (env ENRICH_STALE_AFTER; default 60).",
            valueName: "seconds"
        )
    )
    var staleAfter: Double?

    @Option(
        name: .customLong("max-takeovers"),
        help: ArgumentHelp(
            "Times a row may be taken over from a worker that stopped while holding it before it is failed (env ENRICH_MAX_TAKEOVERS; default 10).",
            valueName: "n"
        )
    )
    var maxTakeovers: Int32?

    @Option(
        name: .customLong("stall-timeout"),
        help: ArgumentHelp(
            "Seconds a run may hold rows without completing any, while the database and the API answer, before it stops as failed; 0 never stops (env ENRICH_STALL_TIMEOUT; default 180).",
            valueName: "seconds"
        )
    )
    var stallTimeout: Double?

    @Option(
        name: .customLong("metrics-port"),
        help: ArgumentHelp(
            "Serve Prometheus metrics on this TCP port at /metrics, 0 for any free port (env ENRICH_METRICS_PORT; default off).",
            valueName: "port"
        )
    )
    var metricsPort: Int?

    @Option(
        name: .customLong("metrics-host"),
        help: ArgumentHelp(
            "Address the metrics endpoint binds (env ENRICH_METRICS_HOST; default 0.0.0.0).",
            valueName: "address"
        )
    )
    var metricsHost: String?

    @Option(name: .customLong("org-code"), help: ArgumentHelp("OrgCode (env NYMBLE_ORG_CODE).", valueName: "code"))
    var orgCode: String?

    @Option(name: .customLong("client-id"), help: ArgumentHelp("ClientId (env NYMBLE_CLIENT_ID).", valueName: "id"))
    var clientId: String?

    /// A base URL the API client can use: http or https, with a host. Checked before anything is called, so
    /// that a typo is a configuration error (exit 4) at once, not a network error retried for seconds.
    static func checkAPIURL(_ text: String, from source: String) throws(ConfigurationError) {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else {
            throw ConfigurationError(
                "\(source) '\(text)' is not an API base URL: expected http(s)://host[:port][/path], "
                    + "e.g. https://api.achievemomentum.com"
            )
        }
    }

    /// Everything resolved: flags first, then environment, then defaults.
    struct Settings {
        var worker: WorkerConfiguration
        var client: NymbleClientConfiguration
        var token: TokenStoreConfiguration
        var credentials: NymbleCredentials
        var progress: ProgressPrinter.Mode
        var progressLogInterval: Duration
        var metricsPort: Int?
        var metricsHost: String
    }

    func settings(_ environment: Environment) throws -> Settings {
        var worker = WorkerConfiguration()
        worker.follow = try follow || (environment.parsed("ENRICH_FOLLOW", as: Int.self).map { $0 != 0 } ?? false)
        worker.concurrency = try concurrency ?? environment.parsed("ENRICH_CONCURRENCY") ?? worker.concurrency
        worker.rateLimit = try rate ?? environment.parsed("ENRICH_RATE")
        worker.maxAttempts = try maxAttempts ?? environment.parsed("ENRICH_MAX_ATTEMPTS")
        worker.claimBatch = try claimBatch ?? environment.parsed("ENRICH_CLAIM_BATCH")
        worker.lease = try environment.seconds(lease, "ENRICH_LEASE", "--lease") ?? worker.lease
        worker.heartbeatInterval =
            try environment.seconds(heartbeat, "ENRICH_HEARTBEAT", "--heartbeat") ?? worker.heartbeatInterval
        worker.pollInterval =
            try environment.seconds(pollInterval, "ENRICH_POLL_INTERVAL", "--poll-interval") ?? worker.pollInterval
        worker.shutdownGrace =
            try environment.seconds(shutdownGrace, "ENRICH_SHUTDOWN_GRACE", "--shutdown-grace", allowZero: true)
            ?? worker.shutdownGrace
        worker.databaseOutageLimit =
            try environment.seconds(
                databaseOutageLimit,
                "ENRICH_DB_OUTAGE_LIMIT",
                "--db-outage-limit",
                allowZero: true
            )
            ?? worker.databaseOutageLimit
        worker.staleAfter =
            try environment.seconds(staleAfter, "ENRICH_STALE_AFTER", "--stale-after") ?? worker.staleAfter
        worker.maxTakeovers = try maxTakeovers ?? environment.parsed("ENRICH_MAX_TAKEOVERS") ?? worker.maxTakeovers
        worker.stallTimeout =
            try environment.seconds(stallTimeout, "ENRICH_STALL_TIMEOUT", "--stall-timeout", allowZero: true)
            ?? worker.stallTimeout
        let base = try environment.seconds(retryBase, "ENRICH_RETRY_BASE", "--retry-base") ?? worker.retryBackoff.base
        let cap = try environment.seconds(retryCap, "ENRICH_RETRY_CAP", "--retry-cap") ?? worker.retryBackoff.cap
        guard cap >= base else { throw ValidationError("--retry-cap must be at least --retry-base") }
        worker.retryBackoff = Backoff(base: base, cap: cap)
        worker.jobName = try jobName ?? environment.value("ENRICH_JOB_NAME") ?? worker.jobName
        let triggerText = try trigger ?? environment.value("ENRICH_TRIGGER") ?? "cli"
        guard let trigger = RunTrigger(rawValue: triggerText) else {
            throw ValidationError("--trigger must be cli or cron (got \(triggerText))")
        }
        worker.trigger = trigger
        do { try worker.validate() } catch { throw ValidationError(error.description) }

        var client = NymbleClientConfiguration()
        client.baseURL = try apiURL ?? environment.value("NYMBLE_BASE_URL") ?? client.baseURL
        try Self.checkAPIURL(client.baseURL, from: apiURL != nil ? "--api-url" : "NYMBLE_BASE_URL")
        // Every task may hold a connection; AsyncHTTPClient fails pool waiters after the connect timeout.
        client.maximumConnections = worker.concurrency
        client.requestTimeout =
            try environment.seconds(requestTimeout, "ENRICH_REQUEST_TIMEOUT", "--request-timeout")
            ?? client.requestTimeout

        guard let orgCode = try orgCode ?? environment.value("NYMBLE_ORG_CODE"),
            let clientId = try clientId ?? environment.value("NYMBLE_CLIENT_ID")
        else {
            throw ConfigurationError(
                "no API credentials: set NYMBLE_ORG_CODE and NYMBLE_CLIENT_ID (or --org-code, --client-id)"
            )
        }
        guard let secret = try environment.value("NYMBLE_CLIENT_SECRET") else {
            throw ConfigurationError("no API secret: set NYMBLE_CLIENT_SECRET or NYMBLE_CLIENT_SECRET_FILE")
        }
        let metricsPort = try self.metricsPort ?? environment.parsed("ENRICH_METRICS_PORT", as: Int.self)
        if let metricsPort, !(0...65_535).contains(metricsPort) {
            throw ValidationError("--metrics-port must be 0-65535 (got \(metricsPort))")
        }
        let progressText = try progress ?? environment.value("ENRICH_PROGRESS") ?? "auto"
        guard let progress = ProgressPrinter.Mode(rawValue: progressText) else {
            throw ValidationError("--progress must be auto, line, log or off (got \(progressText))")
        }
        return Settings(
            worker: worker,
            client: client,
            token: TokenStoreConfiguration(),
            credentials: NymbleCredentials(orgCode: orgCode, clientId: clientId, clientSecret: secret),
            progress: progress,
            progressLogInterval: try environment.seconds(
                progressLogInterval,
                "ENRICH_PROGRESS_LOG_INTERVAL",
                "--progress-log-interval"
            ) ?? .seconds(10),
            metricsPort: metricsPort,
            metricsHost: try metricsHost ?? environment.value("ENRICH_METRICS_HOST") ?? "0.0.0.0"
        )
    }
}
