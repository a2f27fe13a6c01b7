import EnrichCore
import EnrichQueue
import Foundation

/// What `enrich status` shows: queue counts by state, the fleet (live workers, shared token and send
/// budget) and the recent runs with their progress.
public struct StatusReport: Codable, Sendable {
    public var schema: String
    public var queue: QueueCounts
    public var fleet: FleetStatus?
    public var runs: [RunSummary]

    /// A job run plus derived progress figures.
    public struct RunSummary: Codable, Sendable {
        public var run: JobRun
        /// Rows finished (done or failed) by this run.
        public var processed: Int64
        /// Rows per second over the run so far.
        public var itemsPerSecond: Double?
        /// Estimated seconds left (running runs with a known total only).
        public var etaSeconds: Double?
        /// Seconds since the last heartbeat.
        public var heartbeatAgeSeconds: Double
        /// A `running` run whose process is gone (its liveness lock was released): the next run marks it
        /// abandoned.
        public var isDead: Bool

        public init(run: JobRun, isDead: Bool = false, now: Date = .now) {
            self.run = run
            self.isDead = isDead
            processed = run.counters.succeeded + run.counters.failed
            let end = run.finishedAt ?? max(run.heartbeatAt, now)
            let elapsed = end.timeIntervalSince(run.startedAt)
            itemsPerSecond = elapsed > 0.5 ? Double(processed) / elapsed : nil
            heartbeatAgeSeconds = max(0, now.timeIntervalSince(run.heartbeatAt))
            if run.state == .running, let total = run.totalItems, let rate = itemsPerSecond, rate > 0 {
                etaSeconds = Double(max(0, total - processed)) / rate
            }
        }
    }

    /// The queue, the fleet and the `limit` most recent runs (of `job`, or of every job) as they are now.
    public static func read(_ db: Database, limit: Int = 10, job: String? = nil) async throws -> StatusReport {
        let queue = Queue(database: db)
        let jobRuns = JobRuns(database: db)
        try await queue.compactCounts()
        let runs = try await jobRuns.recent(limit: limit, jobName: job)
        let running = try await jobRuns.runningIDs()
        let dead = try await jobRuns.deadRuns(among: running)
        return StatusReport(
            schema: db.configuration.schema,
            queue: try await queue.counts(),
            fleet: try await FleetStatus.read(db, dead: dead),
            runs: runs,
            dead: dead,
            now: try await jobRuns.now()
        )
    }

    public init(
        schema: String,
        queue: QueueCounts,
        fleet: FleetStatus? = nil,
        runs: [JobRun],
        dead: Set<Int64> = [],
        now: Date = .now
    ) {
        self.schema = schema
        self.queue = queue
        self.fleet = fleet
        self.runs = runs.map { RunSummary(run: $0, isDead: dead.contains($0.id), now: now) }
    }

    /// The human-readable rendering: a counts line and a table of runs.
    public func text() -> String {
        var lines: [String] = []
        lines.append(
            "queue (\(schema)): \(queue.pending) pending, \(queue.running) running, \(queue.done) done, "
                + "\(queue.failed) failed, \(queue.total) total"
        )
        if let fleet { lines += Self.lines(fleet) }
        guard !runs.isEmpty else {
            lines.append("no job runs yet")
            return lines.joined(separator: "\n")
        }
        let header = [
            "RUN", "JOB", "TRIGGER", "STATE", "STARTED (UTC)", "PROGRESS", "RATE/s", "ETA", "429s", "LOGINS",
            "HOST:PID", "LAST ERROR",
        ]
        var table = [header]
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        for summary in runs {
            let run = summary.run
            let progress =
                run.totalItems.map { "\(summary.processed)/\($0)" } ?? "\(summary.processed)"
            var state = run.state.rawValue
            if summary.isDead {
                state += " (dead: process gone)"
            } else if let stalledSince = run.stalledSince {
                state += " (stuck \(DurationText.format(max(0, Date.now.timeIntervalSince(stalledSince)))))"
            } else if run.state == .running && summary.heartbeatAgeSeconds > 60 {
                state += " (no heartbeat \(DurationText.format(summary.heartbeatAgeSeconds)))"
            }
            table.append([
                String(run.id), run.jobName, run.trigger.rawValue, state, formatter.string(from: run.startedAt),
                progress + (run.counters.failed > 0 ? " (\(run.counters.failed) failed)" : ""),
                summary.itemsPerSecond.map { String(format: "%.0f", $0) } ?? "-",
                summary.etaSeconds.map { DurationText.format($0) } ?? "-",
                String(run.counters.throttled), String(run.counters.logins), "\(run.host):\(run.pid)",
                run.lastError.map { String($0.prefix(80)) } ?? "",
            ])
        }
        let widths = header.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
        for row in table {
            let padded = row.indices.map { column in
                column == row.count - 1
                    ? row[column] : row[column].padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }
            lines.append(padded.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
        }
        return lines.joined(separator: "\n")
    }

    /// The fleet in a few lines: who works, the shared token (generation and expiry, never the token), the
    /// shared send budget.
    static func lines(_ fleet: FleetStatus) -> [String] {
        var lines: [String] = []
        let workers = fleet.workers.map {
            "run \($0.runID) on \($0.host):\($0.pid) (\(Int(($0.shareOfRows * 100).rounded()))% of rows)"
        }
        lines.append(
            "fleet: \(fleet.workers.count) live worker\(fleet.workers.count == 1 ? "" : "s")"
                + (workers.isEmpty ? "" : ": " + workers.joined(separator: ", "))
        )
        for token in fleet.tokens {
            var line = "  token \(token.key): generation \(token.generation)"
            if let expires = token.expiresInSeconds {
                line += expires > 0 ? ", expires in \(DurationText.format(expires))" : ", expired"
            } else if token.sessionsEnded > 0 {
                line += ", no token (the last worker ended the session)"
            }
            if let owner = token.loggingIn { line += ", \(owner) logging in" }
            line += ", \(token.loginsLastHour) login\(token.loginsLastHour == 1 ? "" : "s") in the last hour"
            if token.refreshes > 0 { line += ", \(token.refreshes) refresh\(token.refreshes == 1 ? "" : "es") in all" }
            if let refused = token.refused { line += "; REFUSED: \(refused.prefix(120))" }
            lines.append(line)
        }
        for budget in fleet.budgets {
            var line = "  send budget \(budget.api): \(budget.slotsReserved) slots in \(budget.reservations) blocks"
            line += ", \(budget.pauses) pause\(budget.pauses == 1 ? "" : "s") after 429s"
            if let leader = budget.leader {
                let rate = budget.sharedRate.map { "\(Int($0.rounded()))/s" } ?? "unlimited"
                line += "; shared rate \(rate) set by \(leader)"
            }
            if budget.pausedForSeconds > 0 { line += "; PAUSED for \(DurationText.format(budget.pausedForSeconds))" }
            lines.append(line)
        }
        return lines
    }
}
