import Foundation
import PostgresNIO

extension Queue {

    /// Enqueues pairs from a source that yields chunks, all in one transaction: if `nextChunk` throws
    /// (bad input on line 9,000), nothing at all is inserted.
    ///
    /// A pair already `pending` or `running` is left alone; one that is `done` or `failed` goes back to
    /// `pending` with its attempts reset (a re-sync), keeping its last written context until overwritten.
    public func enqueue(
        maxAttempts: Int32 = 5,
        nextChunk: () throws -> [Pair]?
    ) async throws -> EnqueueSummary {
        do {
            return try await database.withDirectSession("enqueue") { session in
                try await session.transaction { session in
                    var summary = EnqueueSummary()
                    while let chunk = try nextChunk() {
                        summary.read += chunk.count
                        var seen = Set<Pair>()
                        var organizations: [String] = []
                        var users: [String] = []
                        organizations.reserveCapacity(chunk.count)
                        users.reserveCapacity(chunk.count)
                        for pair in chunk where seen.insert(pair).inserted {
                            organizations.append(pair.organizationId)
                            users.append(pair.userId)
                        }
                        let (inserted, requeued) = try await insert(
                            source: "SELECT o, u FROM unnest(\(organizations)::text[], \(users)::text[]) AS p(o, u)",
                            maxAttempts: maxAttempts,
                            on: session
                        )
                        summary.inserted += inserted
                        summary.requeued += requeued
                    }
                    summary.alreadyQueued = summary.read - summary.inserted - summary.requeued
                    return summary
                }
            }
        } catch {
            throw DatabaseError.wrap(error, during: "enqueue")
        }
    }

    /// Enqueues every `(organization id, user id)` row that `sql` returns, in one transaction.
    ///
    /// The query runs in the queue's database with the caller's privileges; it must return exactly two
    /// columns, organization id then user id, castable to text. Rows with a null, empty, whitespace-only or
    /// over-256-character id reject the whole source, naming the first such row.
    ///
    /// - Parameter origin: where the query came from, to start error messages with (`--from-sql`, or a job
    ///   file's `jobs/nightly.json: source.sql`).
    public func enqueue(
        fromSQL sql: String,
        maxAttempts: Int32 = 5,
        origin: String = "--from-sql"
    ) async throws -> EnqueueSummary {
        let trimmed = sql.trimmingCharacters(in: .whitespacesAndNewlines.union(.init(charactersIn: ";")))
        guard !trimmed.isEmpty else { throw DatabaseError(.badSource, "\(origin): the query is empty") }
        let source = trimmed
        do {
            return try await database.withDirectSession(origin, statementTimeout: Self.bulkStatementTimeout) {
                session in
                try await session.transaction { connection in
                    let sample = try await connection.query(
                        "SELECT * FROM (\(unescaped: source)) AS source LIMIT 1"
                    )
                    guard let first = sample.first else { return EnqueueSummary() }
                    guard first.count == 2 else {
                        throw DatabaseError(
                            .badSource,
                            "\(origin): the query returns \(first.count) column\(first.count == 1 ? "" : "s"); it must "
                                + "return exactly 2 (organization id, then user id)"
                        )
                    }
                    let check = try await connection.query(
                        """
                        SELECT count(*) OVER (), n, o, u FROM (
                            SELECT row_number() OVER () AS n, o::text AS o, u::text AS u
                            FROM (\(unescaped: source)) AS source(o, u)
                        ) AS numbered
                        WHERE o IS NULL OR u IS NULL OR btrim(o) = '' OR btrim(u) = ''
                            OR length(o) > 256 OR length(u) > 256
                        LIMIT 1
                        """
                    )
                    if let bad = check.first {
                        let (_, row, organization, user) = try bad.decode((Int64, Int64, String?, String?).self)
                        let problem = Self.problem(organization: organization, user: user)
                        throw DatabaseError(.badSource, "\(origin) row \(row): \(problem); nothing was enqueued")
                    }
                    let total =
                        try await connection.query("SELECT count(*) FROM (\(unescaped: source)) AS source")
                        .first?.decode(Int64.self) ?? 0
                    let (inserted, requeued) = try await insert(
                        source: "SELECT DISTINCT o::text, u::text FROM (\(unescaped: source)) AS source(o, u)",
                        maxAttempts: maxAttempts,
                        on: connection
                    )
                    return EnqueueSummary(
                        read: Int(total),
                        inserted: inserted,
                        requeued: requeued,
                        alreadyQueued: Int(total) - inserted - requeued
                    )
                }
            }
        } catch {
            let error = unwrapTransactionError(error)
            if let error = error as? DatabaseError, error.code != .queryFailed && error.code != .schemaNotMigrated {
                throw error
            }
            let wrapped = DatabaseError.wrapped(error, during: origin)
            // A lost connection is not the query's fault.
            if wrapped.isTransient { throw wrapped }
            // A missing table here is the user's query's, not enrich's schema: a bad source.
            throw DatabaseError(.badSource, wrapped.message + "; nothing was enqueued")
        }
    }

    private static func problem(organization: String?, user: String?) -> String {
        func issue(_ value: String?, _ field: String) -> String? {
            guard let value else { return "\(field) is null" }
            if value.allSatisfy(\.isWhitespace) { return "\(field) is empty or whitespace" }
            if value.count > 256 { return "\(field) is longer than 256 characters" }
            return nil
        }
        return issue(organization, "OrganizationId") ?? issue(user, "UserId") ?? "invalid id"
    }

    /// Inserts `(o, u)` rows from `source`; returns (inserted, requeued).
    private func insert(
        source: PostgresQuery,
        maxAttempts: Int32,
        on session: DatabaseSession
    ) async throws -> (Int, Int) {
        var query = PostgresQuery(
            unsafeSQL: """
                WITH written AS (
                    INSERT INTO \(schema).queue_items AS item (organization_id, user_id, max_attempts)
                    SELECT incoming.o, incoming.u, $\(source.binds.count + 1)::integer
                    FROM (\(source.sql)) AS incoming(o, u)
                    ON CONFLICT (organization_id, user_id) DO UPDATE
                        SET state = 'pending', attempts = 0, takeovers = 0, max_attempts = EXCLUDED.max_attempts,
                            available_at = now(), last_error = NULL, lease_owner = NULL,
                            lease_expires_at = NULL, updated_at = now()
                        WHERE item.state IN ('done', 'failed')
                    RETURNING (xmax = 0) AS fresh
                )
                SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM written
                """,
            binds: source.binds
        )
        query.binds.append(maxAttempts, context: .default)
        let row = try await session.query(query).first
        guard let row else { return (0, 0) }
        let (inserted, requeued) = try row.decode((Int64, Int64).self)
        return (Int(inserted), Int(requeued))
    }
}
