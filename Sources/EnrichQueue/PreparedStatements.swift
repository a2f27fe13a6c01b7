import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// A statement the runner sends many times per run (the claim, the write-back): prepared once on each
/// connection, then executed by name with new values, so PostgreSQL parses and analyses it once per
/// connection instead of once per call, and may keep a generic plan.
///
/// Each `$n` in ``sql`` must be cast to the exact type of the value bound to it (`$1::integer`,
/// `$4::bigint[]`): values travel in binary, and the server reads them as the types it inferred when it
/// prepared the statement.
struct PreparedStatement: Sendable {
    /// What the statement does, for messages; also its key among a connection's statements.
    let operation: String
    let sql: String

    /// The statement unnamed, with `binds`: parsed and planned where it runs (``PreparedStatements/enabled``
    /// off, and tests that explain its plan for given values).
    func unnamed(_ binds: [PostgresData]) -> PostgresQuery {
        var bindings = PostgresBindings(capacity: binds.count)
        for value in binds { bindings.append(value) }
        return PostgresQuery(unsafeSQL: sql, binds: bindings)
    }
}

/// The statements prepared on each connection of one pool (hence one schema).
///
/// Why PostgresNIO's older `prepare(query:)` and not `PostgresPreparedStatement`: the latter needs its SQL
/// as a static member, and ours names the schema, a setting; its `execute` is also only `async`, which
/// hands the statement to the channel from the caller's thread, the path on which a statement written just
/// as the server closed the connection was dropped and never answered (see ``DatabaseSession``). The older
/// API returns futures, so a statement is prepared and executed on the connection's event loop after the
/// same checks as any other statement.
final class PreparedStatements: Sendable {
    private struct Key: Hashable {
        let connection: ObjectIdentifier
        let operation: String
    }

    private struct Entry {
        let sql: String
        let query: PreparedQuery
    }

    /// Each entry holds its connection (through the `PreparedQuery`), so an identifier cannot be reused by
    /// another connection while its entry exists; a connection's entries go when it closes.
    private struct State {
        var entries: [Key: Entry] = [:]
        /// Connections whose close is watched (once each).
        var watched: Set<ObjectIdentifier> = []
    }

    private let state = Mutex(State())

    /// False: statements run unnamed, parsed and planned on every call (``DatabaseConfiguration/preparedStatements``).
    let enabled: Bool

    init(enabled: Bool) {
        self.enabled = enabled
    }

    /// How many statements are prepared now, over all connections (for tests).
    var count: Int { state.withLock { $0.entries.count } }

    /// Runs `statement` with `binds` on `connection`, preparing it there first when needed. Must be called
    /// on the connection's event loop. Read the rows with ``RowCells``: they say text but hold binary.
    ///
    /// A statement the server no longer has or can no longer run as prepared (`DEALLOCATE`, a pooler that
    /// moved the session, a migration that changed a result column's type) fails with
    /// ``DatabaseError/Code/preparedStatementLost``, which callers retry: it is forgotten, so the retry
    /// prepares it again. Other errors leave it prepared (a deadlock does not invalidate it).
    func execute(
        _ statement: PreparedStatement,
        _ binds: [PostgresData],
        on connection: PostgresConnection,
        logger: Logger
    ) -> EventLoopFuture<[PostgresRow]> {
        connection.eventLoop.assertInEventLoop()
        guard enabled else {
            return connection.query(statement.unnamed(binds), logger: logger).map(\.rows)
        }
        let key = Key(connection: ObjectIdentifier(connection), operation: statement.operation)
        let ready: EventLoopFuture<PreparedQuery>
        if let entry = state.withLock({ $0.entries[key] }), entry.sql == statement.sql {
            ready = connection.eventLoop.makeSucceededFuture(entry.query)
        } else {
            ready = connection.prepare(query: statement.sql).map { query in
                let watch = self.state.withLock { state in
                    state.entries[key] = Entry(sql: statement.sql, query: query)
                    return state.watched.insert(key.connection).inserted
                }
                if watch {
                    connection.closeFuture.whenComplete { _ in self.forget(connection) }
                }
                return query
            }
        }
        return ready.flatMap { query in
            // Checked again on the event loop: a statement handed to a channel that has just closed would be
            // dropped and never answered.
            guard !connection.isClosed else {
                return connection.eventLoop.makeFailedFuture(DatabaseSession.lostBeforeSending)
            }
            return query.execute(binds)
        }.flatMapErrorThrowing { error in
            guard let reason = Self.lostReason(error) else { throw error }
            _ = self.state.withLock { $0.entries.removeValue(forKey: key) }
            throw DatabaseError(
                .preparedStatementLost,
                "\(statement.operation): the statement prepared on this database connection is gone (\(reason)); "
                    + "it is prepared again on the next attempt (behind a pooler that cannot keep prepared "
                    + "statements, set --prepared-statements off)"
            )
        }
    }

    /// The server's reason when `error` says that a prepared statement is gone or unusable as prepared:
    /// 26000 (no such statement), 42P05 (the name exists already: a pooler mixing sessions), or 0A000 for a
    /// cached plan whose result type changed.
    private static func lostReason(_ error: any Error) -> String? {
        guard case .server(let info) = error as? PostgresError, let state = info.fields[.sqlState] else { return nil }
        let message = info.fields[.message] ?? "SQLSTATE \(state)"
        switch state {
        case "26000", "42P05": return "\(message), SQLSTATE \(state)"
        case "0A000" where message.contains("cached plan"): return "\(message), SQLSTATE \(state)"
        default: return nil
        }
    }

    private func forget(_ connection: PostgresConnection) {
        let id = ObjectIdentifier(connection)
        state.withLock { state in
            state.entries = state.entries.filter { $0.key.connection != id }
            state.watched.remove(id)
        }
    }
}

extension PostgresData {
    /// `value` in binary, with its PostgreSQL type, encoded the way a `PostgresQuery` binds it.
    init<Value: PostgresEncodable>(binding value: Value) throws {
        var buffer = ByteBuffer()
        try value.encode(into: &buffer, context: .default)
        self.init(type: Value.psqlType, formatCode: Value.psqlFormat, value: buffer)
    }

    /// `value` in binary, or NULL of its type.
    init<Value: PostgresEncodable>(binding value: Value?) throws {
        guard let value else {
            self.init(type: Value.psqlType, formatCode: Value.psqlFormat, value: nil)
            return
        }
        try self.init(binding: value)
    }
}
