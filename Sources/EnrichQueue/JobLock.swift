import Foundation
import Logging
import PostgresNIO

/// Another run of the same job holds its lock: the second invocation stops at once (exit 5).
public struct JobLockHeldError: Error, CustomStringConvertible, Sendable {
    public let jobName: String
    /// The run that holds it, as recorded in the job runs table (nil if it has not recorded itself yet).
    public let holder: JobRun?

    public var description: String {
        var text = "another run of job \(jobName) is in progress"
        if let holder {
            let started = holder.startedAt.formatted(.iso8601)
            text += " (run \(holder.id) on host \(holder.host), pid \(holder.pid), started \(started))"
        }
        return text + "; not starting a second one"
    }
}

/// The job lock's session ended while the run was going: the run stops (another runner may start the job).
public struct JobLockLostError: Error, CustomStringConvertible, Sendable {
    public let jobName: String
    public let reason: String

    public var description: String {
        "lost the lock of job \(jobName) (\(reason)); stopping so that a second run cannot overlap this one"
    }
}

/// Overlap protection for scheduled jobs: a PostgreSQL session-level advisory lock per job and schema, held
/// on a dedicated connection for the whole run.
///
/// Works across hosts (every runner asks the same server), needs no pid file, and cannot outlive its holder:
/// the server drops the lock when the session ends, so a crashed or SIGKILLed run does not block the next
/// night.
public enum JobLock {
    /// The lock, while held: ``verify()`` checks that its session is still alive and holds it.
    public struct Held: Sendable {
        let session: DatabaseSession
        let jobName: String

        /// Throws ``JobLockLostError`` when the lock's session is gone (server restart, dropped connection):
        /// from then on another runner could start the job, so the run must stop.
        public func verify() async throws {
            let held: Bool
            do {
                let rows = try await session.query(
                    """
                    SELECT count(*) FROM pg_locks
                    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                    """
                )
                held = try (rows.first?.decode(Int64.self) ?? 0) > 0
            } catch {
                throw JobLockLostError(jobName: jobName, reason: "its connection failed: \(error)")
            }
            guard held else { throw JobLockLostError(jobName: jobName, reason: "the server no longer lists it") }
        }
    }

    /// Runs `body` without a lock when `jobName` is nil (plain `enrich run`), else as ``withLock(jobName:database:_:)``.
    public static func withLock<Result: Sendable>(
        jobName: String?,
        database: Database,
        _ body: (Held?) async throws -> Result
    ) async throws -> Result {
        guard let jobName else { return try await body(nil) }
        return try await withLock(jobName: jobName, database: database) { (held: Held) in try await body(held) }
    }

    /// Runs `body` while holding the lock of `jobName`; throws ``JobLockHeldError`` at once when another
    /// session holds it.
    public static func withLock<Result: Sendable>(
        jobName: String,
        database: Database,
        _ body: (Held) async throws -> Result
    ) async throws -> Result {
        let key = "enrich:\(database.configuration.schema):\(jobName)"
        return try await database.withDirectSession("take the job lock") { session in
            let rows = try await session.query("SELECT pg_try_advisory_lock(hashtextextended(\(key), 0))")
            guard try rows.first?.decode(Bool.self) == true else {
                // Who holds it, on the same connection (no second connection: giving up must be quick).
                let holder = try? await session.query(
                    """
                    SELECT \(unescaped: JobRuns.columns) FROM \(unescaped: database.schema).job_runs
                    WHERE job_name = \(jobName) AND state = 'running'
                    ORDER BY started_at DESC, id DESC LIMIT 1
                    """
                ).first.map(JobRuns.jobRun(from:))
                throw JobLockHeldError(jobName: jobName, holder: holder)
            }
            // Closing the session (when body returns or throws) releases the lock.
            return try await body(Held(session: session, jobName: jobName))
        }
    }
}
