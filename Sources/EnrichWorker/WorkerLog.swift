import EnrichQueue
import Logging

/// Log lines more than one part of the worker writes.
enum WorkerLog {
    /// What ``JobRuns/abandonDeadRuns(excluding:staleAfter:markedBy:maxTakeovers:)`` did, if anything.
    static func abandoned(_ abandoned: JobRuns.Abandoned, logger: Logger) {
        for id in abandoned.runIDs {
            logger.warning("marked a dead run abandoned (its process is gone)", metadata: ["abandoned_run_id": "\(id)"])
        }
        if abandoned.rowsFreed > 0 {
            logger.notice(
                "took over the rows a dead run held",
                metadata: [
                    "rows": "\(abandoned.rowsFreed)", "failed_for_too_many_takeovers": "\(abandoned.rowsFailed)",
                ]
            )
        }
    }
}
