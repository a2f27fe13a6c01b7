import Logging
import PostgresNIO
import Synchronization

/// A run's proof of life, visible to every other runner of the schema: a session advisory lock on the
/// run's id, held on a connection of its own for as long as the run lives.
///
/// The server drops the lock the moment the process dies (SIGKILL, crash, lost host), so another runner
/// sees a dead run at once instead of waiting for a stale heartbeat or for leases to expire
/// (``JobRuns/abandonDeadRuns(excluding:staleAfter:markedBy:maxTakeovers:)``). The run's row and its lock
/// are created in one transaction, so no runner ever sees a running row without its lock.
///
/// A database restart ends every session, live runs' included: each run takes its lock again at its next
/// heartbeat (``renew()``), and until the server has been up for ``JobRuns/restartGrace`` nobody treats a
/// missing lock as a death.
public final class RunLiveness: Sendable {
    /// The run this lock stands for.
    public let runID: Int64
    private let database: Database
    private let session: Mutex<DatabaseSession?>

    private init(runID: Int64, database: Database, session: DatabaseSession) {
        self.runID = runID
        self.database = database
        self.session = Mutex(session)
    }

    /// The lock's two keys: the schema's (`classid` in `pg_locks`) and the run id's (`objid`).
    static func lockKeys(schema: String, runID: Int64) -> (Int32, Int32) {
        (JobRuns.livenessClass(schema: schema), Int32(truncatingIfNeeded: runID & 0x7fff_ffff))
    }

    /// Records the start of a run (a `running` row) and takes its liveness lock in the same transaction,
    /// runs `body`, then closes the lock's connection (which releases the lock).
    public static func withRun<T>(
        database: Database,
        start: JobRuns.Start,
        _ body: (RunLiveness) async throws -> T
    ) async throws -> T {
        let connection = try await openConnection(database)
        let liveness: RunLiveness
        do {
            let runID = try await connection.transaction { session in
                let id = try await JobRuns(database: database).insert(start, liveness: true, on: session)
                let (key1, key2) = lockKeys(schema: database.configuration.schema, runID: id)
                try await session.query("SELECT pg_advisory_lock(\(key1), \(key2))")
                return id
            }
            liveness = RunLiveness(runID: runID, database: database, session: connection)
        } catch {
            await connection.close()
            throw error
        }
        do {
            let result = try await body(liveness)
            await liveness.close()
            return result
        } catch {
            await liveness.close()
            throw error
        }
    }

    /// Checks that the lock is still held and takes it again on a new connection when its session is gone
    /// (a database restart). Returns true when it had to take it again. Throws when the database cannot be
    /// reached (the caller's outage budget decides what that means).
    @discardableResult
    public func renew() async throws -> Bool {
        let (key1, key2) = Self.lockKeys(schema: database.configuration.schema, runID: runID)
        if let current = session.withLock({ $0 }) {
            do {
                let rows = try await current.query(
                    """
                    SELECT count(*) FROM pg_locks
                    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                        AND classid = \(key1)::oid AND objid = \(key2)::oid AND objsubid = 2
                    """
                )
                if try rows.first?.decode(Int64.self) ?? 0 > 0 { return false }
            } catch {
                // The session is gone: take the lock again below.
            }
            session.withLock { $0 = nil }
            await current.close()
        }
        let fresh = try await Self.openConnection(database)
        do {
            try await fresh.query("SELECT pg_advisory_lock(\(key1), \(key2))")
        } catch {
            await fresh.close()
            throw error
        }
        session.withLock { $0 = fresh }
        return true
    }

    private static func openConnection(_ database: Database) async throws -> DatabaseSession {
        try await database.openDirectSession("hold the run's liveness lock")
    }

    /// Closes the lock's connection (the server releases the lock with it) and waits until it is closed.
    private func close() async {
        let current = session.withLock { session in
            defer { session = nil }
            return session
        }
        await current?.close()
    }
}
