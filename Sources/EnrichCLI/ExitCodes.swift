import ArgumentParser

/// The process exit codes of `enrich`, stable for scripts and cron.
public enum EnrichExitCode {
    /// Everything asked for was done.
    public static let success: Int32 = 0
    /// The run finished, but some rows failed permanently (see `enrich status`).
    public static let someRowsFailed: Int32 = 1
    /// The command failed: a database statement, invalid API credentials, a lost database.
    public static let failure: Int32 = 2
    /// Bad input (CSV, `--from-sql`, job definition): nothing was enqueued.
    public static let badInput: Int32 = 3
    /// Configuration error or the database cannot be reached.
    public static let configuration: Int32 = 4
    /// Another run of the same job holds the lock.
    public static let overlap: Int32 = 5
    /// Stopped by SIGINT/SIGTERM; the run was recorded `interrupted`, unstarted rows released.
    public static let interrupted: Int32 = 6
    /// `status --check` found a problem (failed, stuck or too old last run).
    public static let checkFailed: Int32 = 7

    /// The text for `--help` and README.
    public static let helpText = """
        Exit codes: 0 success; 1 run finished but some rows failed permanently; 2 failure \
        (database, API credentials); 3 bad input, nothing enqueued; 4 configuration or database unreachable; \
        5 another run of the job is in progress; 6 interrupted by a signal; 7 status --check found a problem; \
        64 usage error.
        """
}
