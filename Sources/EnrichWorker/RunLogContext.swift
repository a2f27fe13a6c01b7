import Logging

/// Puts the run id on every log line written while a run is in progress, whoever writes it (the worker, the
/// token store's login, the throttle): a task-local value that child tasks inherit, read by a
/// `Logger.MetadataProvider` installed when logging is bootstrapped.
public enum RunLogContext {
    /// The id of the run the current task works for, if any.
    @TaskLocal public static var runID: Int64?

    /// Adds `run_id` to a log line's metadata while ``runID`` is set.
    public static let metadataProvider = Logger.MetadataProvider {
        guard let runID else { return [:] }
        return ["run_id": "\(runID)"]
    }
}
