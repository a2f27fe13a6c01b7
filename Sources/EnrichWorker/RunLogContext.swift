import Logging
import Synchronization

/// Puts the run id on every log line written while a run is in progress, whoever writes it: a `Logger.
/// MetadataProvider` installed when logging is bootstrapped reads it.
///
/// Inside a run's tasks (the worker, the token store's login, the throttle) the id comes from a task-local
/// value that child tasks inherit. Lines from outside those tasks (the service group handling a signal,
/// the metrics endpoint) get the process's current run: `enrich run` performs one run per process.
public enum RunLogContext {
    /// The id of the run the current task works for, if any.
    @TaskLocal public static var runID: Int64?

    private static let processRunID = Mutex<Int64?>(nil)

    /// Records the run this process is performing (nil when it ends).
    public static func setProcessRun(_ id: Int64?) { processRunID.withLock { $0 = id } }

    /// Adds `run_id` to a log line's metadata while a run is in progress.
    public static let metadataProvider = Logger.MetadataProvider {
        guard let id = runID ?? processRunID.withLock({ $0 }) else { return [:] }
        return ["run_id": "\(id)"]
    }
}
