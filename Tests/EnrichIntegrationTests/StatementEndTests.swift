import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

@testable import EnrichQueue

/// The run that hung after a PostgreSQL restart, pinned at the level where it happened: PostgresNIO dropped
/// a statement written to a connection in the tick between the server closing it and the pool hearing of
/// it, and the statement's caller waited forever. Every statement must end, whatever the server does.
@Suite("Statements always end", .timeLimit(.minutes(3)))
struct StatementEndTests {
    static let sleep = PreparedStatement(operation: "probe", sql: "SELECT pg_sleep($1::float8)")

    @Test(
        "statements issued while the server restarts three times all end: answered, failed, or timed out; plain and prepared"
    )
    func statementsEndAcrossRestarts() async throws {
        try await PrivateCluster.withCluster { cluster in
            let configuration = try DatabaseConfiguration(
                url: cluster.url,
                maximumConnections: 8,
                connectTimeout: .seconds(2),
                statementTimeout: .seconds(5)
            )
            var logger = Logger(label: "enrich.tests.restart")
            logger.logLevel = .critical
            let ended = try await Database.withDatabase(configuration, logger: logger) { database in
                let stop = Stopwatch()
                return try await withThrowingTaskGroup(of: Tally.self) { group in
                    for task in 0..<16 {
                        group.addTask {
                            var tally = Tally()
                            while !stop.isOver {
                                do {
                                    // Half the tasks prepare their statement on each new connection and
                                    // run it by name: both steps must end too.
                                    if task.isMultiple(of: 2) {
                                        try await database.query("probe", "SELECT pg_sleep(0.001)")
                                    } else {
                                        try await database.execute(Self.sleep, [try PostgresData(binding: 0.001)])
                                    }
                                    tally.answered += 1
                                    if !task.isMultiple(of: 2) && tally.failed > 0 { tally.preparedAfterFailure += 1 }
                                } catch {
                                    tally.failed += 1
                                    try await Task.sleep(for: .milliseconds(5))
                                }
                            }
                            return tally
                        }
                    }
                    for _ in 0..<3 {
                        try await Task.sleep(for: .milliseconds(700))
                        try await cluster.restart()
                    }
                    try await Task.sleep(for: .milliseconds(700))
                    stop.end()
                    var total = Tally()
                    for try await tally in group {
                        total.answered += tally.answered
                        total.failed += tally.failed
                        total.preparedAfterFailure += tally.preparedAfterFailure
                    }
                    return total
                }
            }
            // Reaching this line is the test: every task's last statement ended. The counts show that the
            // statements really ran through the restarts.
            #expect(ended.answered > 100, "\(ended)")
            #expect(ended.preparedAfterFailure > 20, "prepared again on new connections after a restart: \(ended)")
            #expect(ended.failed > 0, "the restarts broke statements in flight: \(ended)")
        }
    }
}

/// What the statements of a task did.
struct Tally: Sendable {
    var answered = 0
    var failed = 0
    /// Prepared statements answered after the task's first failure (so on a connection opened since).
    var preparedAfterFailure = 0
}

/// A flag the test flips to end its loops.
final class Stopwatch: Sendable {
    private let over = Mutex(false)
    var isOver: Bool { over.withLock { $0 } }
    func end() { over.withLock { $0 = true } }
}
