import PostgresNIO

/// SQL of the application's own that receives every written batch of successful results, **in the same
/// transaction** as the queue's write-back: the app's table and the queue never disagree (a failing target
/// rolls the batch back; its rows stay `running` under the run's lease and are taken over, never lost).
///
/// The SQL gets five `text` parameters, each an array with one element per row, nulls kept:
/// `$1` OrganizationId, `$2` UserId, `$3` CustomerNumber, `$4` PriceTier, `$5` CurrencyCode, used as
/// `unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])`.
public struct WriteBackTarget: Sendable, Equatable {
    public let sql: String
    /// Where the SQL was given (a job file's path, `--target-sql`), named in every error about it.
    public let origin: String

    public init(sql: String, origin: String) {
        self.sql = sql
        self.origin = origin
    }

    /// Checks the SQL against the database without running it (`PREPARE` with the five parameters), so a
    /// typo, a missing table or column, or a parameter used without its `::text[]` cast fails before any call.
    ///
    /// - Throws: ``DatabaseError/Code/badTarget`` naming ``origin`` and the server's reason.
    public func validate(on database: Database) async throws {
        do {
            try await database.withSession("check the write-back target") { session in
                try await session.query(
                    PostgresQuery(unsafeSQL: "PREPARE enrich_target (text, text, text, text, text) AS \(sql)")
                )
                try await session.query("DEALLOCATE enrich_target")
            }
        } catch let error as DatabaseError where !error.isTransient {
            throw DatabaseError(
                .badTarget,
                "the write-back target SQL from \(origin) is unusable: \(error.message)",
                sqlState: error.sqlState
            )
        }
    }

    /// Runs the SQL for `completions` in `session` (the write-back's transaction).
    func run(_ completions: [Completion], in session: DatabaseSession) async throws {
        guard !completions.isEmpty else { return }
        var bindings = PostgresBindings(capacity: 5)
        let columns: [[String?]] = [
            completions.map { $0.item.pair.organizationId }, completions.map { $0.item.pair.userId },
            completions.map(\.context.customerNumber), completions.map(\.context.priceTier),
            completions.map(\.context.currencyCode),
        ]
        for column in columns { bindings.append(Self.arrayLiteral(column)) }
        do {
            try await session.query(PostgresQuery(unsafeSQL: sql, binds: bindings))
        } catch {
            let wrapped = DatabaseError.wrap(error, during: "write back to the target")
            guard let error = wrapped as? DatabaseError, !error.isTransient else { throw wrapped }
            throw DatabaseError(
                .queryFailed,
                "the write-back target SQL from \(origin) failed: \(error.message); the batch was not written "
                    + "(neither the app's table nor the queue), its rows stay retryable",
                sqlState: error.sqlState
            )
        }
    }

    /// A PostgreSQL array literal of text (`{"a","b",NULL}`): bound as `text` and cast by the SQL with
    /// `::text[]`, it carries nulls, which PostgresNIO's bound arrays cannot.
    static func arrayLiteral(_ values: [String?]) -> String {
        var literal = "{"
        for (index, value) in values.enumerated() {
            if index > 0 { literal += "," }
            guard let value else {
                literal += "NULL"
                continue
            }
            literal += "\""
            for character in value.unicodeScalars where character != "\u{0}" {
                if character == "\"" || character == "\\" { literal += "\\" }
                literal.unicodeScalars.append(character)
            }
            literal += "\""
        }
        return literal + "}"
    }
}
