import EnrichQueue
import PostgresNIO

/// The heartbeat samples of runs (`run_samples`), which the status page draws.
struct RunSamples {
    let database: Database

    /// The samples of `runs`, in time order, by run id.
    func read(runs: [Int64]) async throws -> [Int64: [RunSample]] {
        guard !runs.isEmpty else { return [:] }
        let schema = "\"\(database.configuration.schema)\""
        let rows = try await database.query(
            "read run samples",
            """
            SELECT s.run_id, EXTRACT(EPOCH FROM s.at - r.started_at)::float8, s.succeeded + s.failed, s.throttled
            FROM \(unescaped: schema).run_samples AS s
            JOIN \(unescaped: schema).job_runs AS r ON r.id = s.run_id
            WHERE s.run_id = ANY(\(runs)::bigint[])
            ORDER BY s.run_id, s.at
            """
        )
        var samples: [Int64: [RunSample]] = [:]
        for row in rows {
            let (run, elapsed, finished, throttled) = try row.decode((Int64, Double, Int64, Int64).self)
            // The run's start is a sample of zero: the first heartbeat's rate is measured from it.
            if samples[run] == nil { samples[run] = [RunSample(elapsed: 0, finished: 0, throttled: 0)] }
            samples[run]?.append(RunSample(elapsed: elapsed, finished: finished, throttled: throttled))
        }
        return samples
    }
}
