import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// A connection lent for one unit of work, on which every statement ends: with its answer, with an error,
/// or with the connection closed at the statement's deadline.
///
/// Why not `PostgresClient.query` or `PostgresConnection.query` directly: PostgresNIO hands a statement
/// to the connection's channel from the caller's thread without a write promise. When the server closes
/// the connection (`pg_ctl restart`), the channel removes its handlers one event-loop tick before the pool
/// hears of the close; a statement written in between is dropped by the bare channel and its answer promise
/// is never completed, so the caller waits forever (a run hung that way after a restart: one write-back
/// statement never answered). Here a statement is handed over *on the connection's event loop*, after
/// checking there that the channel is still active, so the handler always owns its promise and fails it
/// when the connection closes; a timer on the same event loop closes the connection when no answer comes
/// by the deadline, and task cancellation closes it too.
public struct DatabaseSession: Sendable {
    let connection: PostgresConnection
    let logger: Logger
    /// Statements without a timeout of their own must end by then (a pooled session's deadline); nil: each
    /// gets ``statementTimeout``.
    let deadline: ContinuousClock.Instant?
    /// The timeout of each statement when the session has no deadline.
    let statementTimeout: Duration
    /// Where the statements go, for messages (never the password).
    let serverDescription: String
    /// What the session does, for messages.
    let operation: String
    /// The pool's prepared statements (``execute(_:_:timeout:)``).
    let statements: PreparedStatements

    /// Runs `query` and returns all its rows; throws ``DatabaseError`` (`timedOut`) when the server gives no
    /// answer by the session's deadline (or within `timeout`).
    @discardableResult
    public func query(_ query: PostgresQuery, timeout: Duration? = nil) async throws -> [PostgresRow] {
        let logger = self.logger
        return try await run(timeout: timeout) { connection in
            connection.query(query, logger: logger).map(\.rows)
        }
    }

    /// Runs a statement prepared on this connection (prepared first when it is not yet), with `binds` in the
    /// order of its `$n`; the same deadline as ``query(_:timeout:)``.
    @discardableResult
    func execute(
        _ statement: PreparedStatement,
        _ binds: [PostgresData],
        timeout: Duration? = nil
    ) async throws -> [PostgresRow] {
        let (statements, logger) = (self.statements, self.logger)
        return try await run(timeout: timeout) { connection in
            statements.execute(statement, binds, on: connection, logger: logger)
        }
    }

    /// Starts one statement with `start` on the connection's event loop, once it is checked there to be
    /// open; closes the connection when no answer comes by the deadline or the task is cancelled, which
    /// fails the statement.
    private func run(
        timeout: Duration?,
        _ start: @escaping @Sendable (PostgresConnection) -> EventLoopFuture<[PostgresRow]>
    ) async throws -> [PostgresRow] {
        let connection = self.connection
        let now = ContinuousClock.now
        let own = timeout ?? deadline.map { now.duration(to: $0) } ?? statementTimeout
        let limit = Database.deadline.map { min(own, now.duration(to: $0)) } ?? own
        guard limit > .zero else { throw timedOut(after: nil) }
        let expired = ExpiryFlag()
        let answer = connection.eventLoop.flatSubmit { () -> EventLoopFuture<[PostgresRow]> in
            guard !connection.isClosed else {
                return connection.eventLoop.makeFailedFuture(Self.lostBeforeSending)
            }
            let result = start(connection)
            let timer = connection.eventLoop.scheduleTask(in: .nanoseconds(limit.inNanoseconds)) {
                expired.set()
                connection.closeSoon()
            }
            result.whenComplete { _ in timer.cancel() }
            return result
        }
        do {
            return try await withTaskCancellationHandler {
                try await answer.get()
            } onCancel: {
                connection.closeSoon()
            }
        } catch {
            if expired.isSet { throw timedOut(after: limit) }
            throw DatabaseError.wrap(error, during: operation)
        }
    }

    /// The connection was found closed on its event loop before a statement was handed to it.
    static let lostBeforeSending = DatabaseError(
        .cannotConnect,
        "lost the database connection before the statement was sent"
    )

    private func timedOut(after limit: Duration?) -> DatabaseError {
        let seconds =
            limit.map { " within \($0.inSeconds.formatted(.number.precision(.fractionLength(0...1)))) s" } ?? ""
        return DatabaseError(.timedOut, "\(operation): PostgreSQL at \(serverDescription) gave no answer\(seconds)")
    }
}

/// Which ended first in ``Database/withSession(_:timeout:_:)``: the session or its deadline.
private enum SessionRace<T: Sendable>: Sendable {
    case finished(T)
    case deadline
    case cancelled
}

extension PostgresConnection {
    /// Starts closing the connection without waiting: its pending statements fail at once.
    fileprivate func closeSoon() {
        let _: EventLoopFuture<Void> = close()
    }
}

/// Set once by a statement's timer, read after the statement ended.
private final class ExpiryFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}

extension Database {
    /// The latest instant by which statements started in this task must end; set by a caller that has a
    /// budget of its own (the worker's database outage limit). Sessions end at the earlier of it and their
    /// own timeout.
    @TaskLocal public static var deadline: ContinuousClock.Instant?

    /// When a session started now must end: `timeout` (default ``DatabaseConfiguration/statementTimeout``),
    /// or the task's ``deadline`` if that comes first.
    func sessionDeadline(timeout: Duration?) -> ContinuousClock.Instant {
        let own = ContinuousClock.now + (timeout ?? configuration.statementTimeout)
        guard let inherited = Database.deadline else { return own }
        return min(own, inherited)
    }

    /// Leases a pooled connection and runs `body` with it. The whole session (waiting for a connection
    /// included: the pool keeps a request waiting while it cannot connect) ends by its deadline: then the
    /// lease is given up or the statement's connection closed, and ``DatabaseError`` (`timedOut`) is thrown.
    /// PostgresNIO errors come out as ``DatabaseError`` naming `operation`.
    public func withSession<T: Sendable>(
        _ operation: String,
        timeout: Duration? = nil,
        _ body: @escaping @Sendable (DatabaseSession) async throws -> T
    ) async throws -> T {
        let start = ContinuousClock.now
        let deadline = sessionDeadline(timeout: timeout)
        let (client, logger, server, statements) = (self.client, self.logger, configuration.description, statements)
        let timeout = timeout ?? configuration.statementTimeout
        do {
            return try await withThrowingTaskGroup(of: SessionRace<T>.self) { group in
                group.addTask {
                    .finished(
                        try await client.withConnection { connection in
                            try await body(
                                DatabaseSession(
                                    connection: connection,
                                    logger: logger,
                                    deadline: deadline,
                                    statementTimeout: timeout,
                                    serverDescription: server,
                                    operation: operation,
                                    statements: statements
                                )
                            )
                        }
                    )
                }
                group.addTask {
                    do {
                        try await Task.sleep(until: deadline)
                        return .deadline
                    } catch {
                        return .cancelled
                    }
                }
                defer { group.cancelAll() }
                switch try await group.next() {
                case .finished(let value): return value
                case .deadline:
                    let seconds = start.duration(to: deadline).inSeconds
                    throw DatabaseError(
                        .timedOut,
                        "\(operation): PostgreSQL at \(server) gave no answer within \(Int(seconds.rounded())) s"
                    )
                case .cancelled, nil: throw CancellationError()
                }
            }
        } catch {
            throw DatabaseError.wrapDriverError(error, during: operation)
        }
    }

    /// One statement on a pooled connection (see ``withSession(_:timeout:_:)``).
    @discardableResult
    public func query(
        _ operation: String,
        _ query: PostgresQuery,
        timeout: Duration? = nil
    ) async throws
        -> [PostgresRow]
    {
        try await withSession(operation, timeout: timeout) { try await $0.query(query) }
    }

    /// One prepared statement on a pooled connection (see ``withSession(_:timeout:_:)`` and
    /// ``PreparedStatements``).
    @discardableResult
    func execute(_ statement: PreparedStatement, _ binds: [PostgresData]) async throws -> [PostgresRow] {
        try await withSession(statement.operation) { try await $0.execute(statement, binds) }
    }

    /// Runs `body` in a transaction on a pooled connection: committed when it returns, rolled back when it
    /// throws (a connection whose rollback fails is closed, never handed back mid-transaction).
    public func transaction<T: Sendable>(
        _ operation: String,
        timeout: Duration? = nil,
        _ body: @escaping @Sendable (DatabaseSession) async throws -> T
    ) async throws -> T {
        try await withSession(operation, timeout: timeout) { session in try await session.transaction(body) }
    }

    /// Opens a connection of its own (not pooled) for `body` and closes it afterwards: for work that must
    /// run in the caller's task (a streamed input read as it is sent) and for long sessions. Connecting is
    /// bounded by the connect timeout, and each statement by `statementTimeout` (default
    /// ``DatabaseConfiguration/statementTimeout``) or a timeout of its own.
    public func withDirectSession<T>(
        _ operation: String,
        statementTimeout: Duration? = nil,
        _ body: (DatabaseSession) async throws -> T
    ) async throws -> T {
        let session = try await openDirectSession(operation, statementTimeout: statementTimeout)
        do {
            let result = try await body(session)
            await session.close()
            return result
        } catch {
            await session.close()
            throw DatabaseError.wrapDriverError(error, during: operation)
        }
    }

    /// A direct session the caller must ``DatabaseSession/close()`` (for a connection held across scopes,
    /// such as a run's liveness lock).
    func openDirectSession(_ operation: String, statementTimeout: Duration? = nil) async throws -> DatabaseSession {
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: try configuration.connectionConfiguration(),
                id: 0,
                logger: logger
            )
        } catch {
            throw cannotConnect(error)
        }
        return DatabaseSession(
            connection: connection,
            logger: logger,
            deadline: nil,
            statementTimeout: statementTimeout ?? configuration.statementTimeout,
            serverDescription: configuration.description,
            operation: operation,
            statements: statements
        )
    }
}

extension DatabaseSession {
    /// Closes the connection and waits until it is closed.
    func close() async {
        try? await connection.close()
    }

    /// Starts closing the connection without waiting.
    func closeSoon() {
        connection.closeSoon()
    }

    /// `body` between BEGIN and COMMIT; ROLLBACK when it throws (the connection is closed if that fails,
    /// so that it never goes back to the pool inside a transaction).
    public func transaction<T>(_ body: (DatabaseSession) async throws -> T) async throws -> T {
        try await query("BEGIN")
        let result: T
        do {
            result = try await body(self)
        } catch {
            do {
                try await query("ROLLBACK")
            } catch {
                connection.closeSoon()
            }
            throw error
        }
        try await query("COMMIT")
        return result
    }
}
