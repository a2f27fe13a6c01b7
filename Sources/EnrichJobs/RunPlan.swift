import EnrichQueue
import EnrichSettings
import EnrichToken
import EnrichWorker
import NymbleAPI

/// Everything one `enrich run` needs, read from its settings (flag > environment > job file > default).
public struct RunPlan: Sendable {
    /// The job definition, for `--job` runs.
    public var job: JobDefinition?
    public var database: DatabaseConfiguration
    public var worker: WorkerConfiguration
    public var client: NymbleClientConfiguration
    public var credentials: APICredentials
    public var token: TokenStoreConfiguration
    /// Share the token and the send budget with the other workers of the schema (off with `--solo`).
    public var fleet: Bool
    /// The application's SQL that receives each written batch (`--target-sql`, else the job's `target`).
    public var target: WriteBackTarget?
    /// Where to serve Prometheus metrics; nil: off.
    public var metrics: (host: String, port: Int)?
    /// The sources the plan was read from (the command line reads its own output settings from them).
    public var sources: SettingSources

    /// Reads the plan from command-line `flags` and the environment, loading the job definition named by
    /// `--job` (or `ENRICH_JOB`) first so that its values sit under them.
    public static func resolve(flags: [String: String], environment: Environment) throws -> RunPlan {
        var sources = SettingSources(flags: flags, environment: environment)
        var job: JobDefinition?
        if let reference = try sources.value(Settings.job) {
            // The job names its runs: a --job-name flag contradicts it (an ENRICH_JOB_NAME variable, set for
            // other runs, is ignored).
            if sources.flags[Settings.jobName.name] != nil {
                throw SettingError(
                    setting: Settings.jobName.name,
                    origin: sources.origin(of: Settings.jobName),
                    problem: "cannot be combined with --job: a job's runs are recorded under its name"
                )
            }
            let loaded = try JobDefinition.load(
                reference,
                directory: try sources.value(Settings.jobsDirectory) ?? "jobs"
            )
            sources.jobFile = (loaded.path, loaded.settings)
            job = loaded
        }
        // Every value given is checked, also those only the command line reads (progress, logging).
        try sources.check(Settings.database + Settings.run)
        var worker = try sources.workerConfiguration()
        if let job { worker.jobName = job.name }
        let port = try sources.value(Settings.metricsPort)
        var target = job.flatMap { job in job.target.map { WriteBackTarget(sql: $0, origin: "\(job.path): target.sql") }
        }
        if let sql = try sources.value(Settings.targetSQL) {
            target = WriteBackTarget(sql: sql, origin: sources.origin(of: Settings.targetSQL).description)
        }
        return RunPlan(
            job: job,
            database: try sources.databaseConfiguration(),
            worker: worker,
            client: try sources.clientConfiguration(concurrency: worker.concurrency),
            credentials: try sources.apiCredentials(),
            token: TokenStoreConfiguration(),
            fleet: !(try sources.value(Settings.solo) ?? false),
            target: target,
            metrics: try port.map { (try sources.value(Settings.metricsHost) ?? "127.0.0.1", $0) },
            sources: sources
        )
    }
}
