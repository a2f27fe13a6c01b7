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

    /// Each entry holds its connection (through the `PreparedQuery`), so an identifier cannot be reused by
    /// another connection while its entry exists; entries go when their connection closes.
    private let prepared = Mutex<[Key: PreparedQuery]>([:])

    /// False: statements run unnamed, parsed and planned on every call (``DatabaseConfiguration/preparedStatements``).
    let enabled: Bool

    init(enabled: Bool) {
        self.enabled = enabled
    }

    /// How many statements are prepared now, over all connections (for tests).
    var count: Int { prepared.withLock { $0.count } }

    /// Runs `statement` with `binds` on `connection`, preparing it there first when needed. Must be called
    /// on the connection's event loop. A failed execution forgets the statement on that connection (it is
    /// prepared again next time), so that one that became unusable (a cached plan whose result type changed
    /// under a migration) does not keep failing.
    func execute(
        _ statement: PreparedStatement,
        _ binds: [PostgresData],
        on connection: PostgresConnection,
        logger: Logger
    ) -> EventLoopFuture<[PostgresRow]> {
        connection.eventLoop.assertInEventLoop()
        guard enabled else {
            var bindings = PostgresBindings(capacity: binds.count)
            for value in binds { bindings.append(value) }
            return connection.query(PostgresQuery(unsafeSQL: statement.sql, binds: bindings), logger: logger).map(
                \.rows
            )
        }
        let key = Key(connection: ObjectIdentifier(connection), operation: statement.operation)
        let ready: EventLoopFuture<PreparedQuery>
        if let query = prepared.withLock({ $0[key] }) {
            ready = connection.eventLoop.makeSucceededFuture(query)
        } else {
            ready = connection.prepare(query: statement.sql).map { query in
                let first = self.prepared.withLock { prepared in
                    defer { prepared[key] = query }
                    return !prepared.keys.contains { $0.connection == key.connection }
                }
                if first {
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
            _ = self.prepared.withLock { $0.removeValue(forKey: key) }
            throw error
        }
    }

    private func forget(_ connection: PostgresConnection) {
        let id = ObjectIdentifier(connection)
        prepared.withLock { prepared in prepared = prepared.filter { $0.key.connection != id } }
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
