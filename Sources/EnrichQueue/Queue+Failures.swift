import Foundation
import PostgresNIO

/// Which failed rows a `failures` report or a `requeue` is about; every part is optional (nil: any).
public struct FailureFilter: Sendable, Equatable {
    /// Rows the run with this id failed (the run that last claimed them).
    public var run: Int64?
    /// Rows of this OrganizationId.
    public var organization: String?
    /// Rows whose reason contains this text (case-insensitive).
    public var reason: String?

    public init(run: Int64? = nil, organization: String? = nil, reason: String? = nil) {
        self.run = run
        self.organization = organization
        self.reason = reason
    }
}

/// Failed rows grouped by their reason: what `enrich failures` shows.
public struct FailureReport: Codable, Sendable, Equatable {
    /// One reason and its rows.
    public struct Group: Codable, Sendable, Equatable {
        public var reason: String
        public var count: Int64
        /// When the first and the last of these rows failed.
        public var firstSeen: Date
        public var lastSeen: Date
        /// The most recent few of these rows.
        public var examples: [Example]
    }

    /// A failed pair, with the run that failed it.
    public struct Example: Codable, Sendable, Equatable {
        public var organizationId: String
        public var userId: String
        public var run: Int64?
    }

    /// Failed rows matching the filter, in every group (also those beyond the limit).
    public var total: Int64
    /// The groups, the largest first, at most the limit asked for.
    public var groups: [Group]
}

extension Queue {
    /// The failed rows matching `filter`, grouped by reason (the largest groups first, at most `limit`), each
    /// with its count, first and last failure, and up to `examples` of its most recent pairs.
    public func failures(_ filter: FailureFilter, limit: Int = 20, examples: Int = 3) async throws -> FailureReport {
        let table = "\(schema).queue_items"
        let totals = try await database.query(
            "count failed rows",
            Self.query("SELECT count(*) FROM \(table) WHERE \(Self.matching)", filter)
        )
        let total = try totals.first?.decode(Int64.self) ?? 0
        let (limit, examples) = (max(1, limit), max(1, examples))
        let rows = try await database.query(
            "group failed rows by reason",
            Self.query(
                """
                SELECT coalesce(last_error, '(no reason recorded)'), count(*), min(updated_at), max(updated_at),
                    (array_agg(organization_id ORDER BY updated_at DESC, id DESC))[1:\(examples)],
                    (array_agg(user_id ORDER BY updated_at DESC, id DESC))[1:\(examples)],
                    (array_agg(coalesce(job_run_id, 0) ORDER BY updated_at DESC, id DESC))[1:\(examples)]
                FROM \(table) WHERE \(Self.matching)
                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT \(limit)
                """,
                filter
            )
        )
        let groups = try rows.map { row in
            let (reason, count, first, last, organizations, users, runs) = try row.decode(
                (String, Int64, Date, Date, [String], [String], [Int64]).self
            )
            let examples = zip(zip(organizations, users), runs).map { pair, run in
                FailureReport.Example(organizationId: pair.0, userId: pair.1, run: run == 0 ? nil : run)
            }
            return FailureReport.Group(
                reason: reason,
                count: count,
                firstSeen: first,
                lastSeen: last,
                examples: examples
            )
        }
        return FailureReport(total: total, groups: groups)
    }

    /// Puts the failed rows matching `filter` back to `pending` with fresh attempts (with `dryRun`, only
    /// counts them); returns how many.
    @discardableResult
    public func requeueFailed(_ filter: FailureFilter = FailureFilter(), dryRun: Bool = false) async throws -> Int {
        let table = "\(schema).queue_items"
        let sql =
            dryRun
            ? "SELECT count(*) FROM \(table) WHERE \(Self.matching)"
            : """
            WITH requeued AS (
                UPDATE \(table) SET
                    state = 'pending', attempts = 0, takeovers = 0, available_at = now(), updated_at = now()
                WHERE \(Self.matching)
                RETURNING 1
            )
            SELECT count(*) FROM requeued
            """
        let rows = try await database.query(
            dryRun ? "count failed rows" : "requeue failed rows",
            Self.query(sql, filter)
        )
        return Int(try rows.first?.decode(Int64.self) ?? 0)
    }

    /// The condition for failed rows matching the filter bound as $1 (run), $2 (organization), $3 (reason).
    private static let matching = """
        state = 'failed' AND ($1::bigint IS NULL OR job_run_id = $1)
            AND ($2::text IS NULL OR organization_id = $2)
            AND ($3::text IS NULL OR strpos(lower(coalesce(last_error, '')), lower($3)) > 0)
        """

    /// `sql` (its only spliced parts: the validated schema and integers) with the filter's values bound.
    private static func query(_ sql: String, _ filter: FailureFilter) -> PostgresQuery {
        var bindings = PostgresBindings(capacity: 3)
        bindings.append(filter.run)
        bindings.append(filter.organization)
        bindings.append(filter.reason)
        return PostgresQuery(unsafeSQL: sql, binds: bindings)
    }
}
