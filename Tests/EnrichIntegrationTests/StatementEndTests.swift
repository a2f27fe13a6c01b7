import EnrichQueue
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// The run that hung after a PostgreSQL restart, pinned at the level where it happened: PostgresNIO dropped
/// a statement written to a connection in the tick between the server closing it and the pool hearing of
/// it, and the statement's caller waited forever. Every statement must end, whatever the server does.
@Suite("Statements always end", .timeLimit(.minutes(3)))
struct StatementEndTests {
    @Test("statements issued while the server restarts three times all end: answered, failed, or timed out")
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
                return try await withThrowingTaskGroup(of: (answered: Int, failed: Int).self) { group in
                    for _ in 0..<16 {
                        group.addTask {
                            var tally = (answered: 0, failed: 0)
                            while !stop.isOver {
                                do {
                                    try await database.query("probe", "SELECT pg_sleep(0.001)")
                                    tally.answered += 1
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
                    var total = (answered: 0, failed: 0)
                    for try await tally in group {
                        total.answered += tally.answered
                        total.failed += tally.failed
                    }
                    return total
                }
            }
            // Reaching this line is the test: every task's last statement ended. The counts show that the
            // statements really ran through the restarts.
            #expect(ended.answered > 100, "\(ended)")
            #expect(ended.failed > 0, "the restarts broke statements in flight: \(ended)")
        }
    }
}

/// A flag the test flips to end its loops.
final class Stopwatch: Sendable {
    private let over = Mutex(false)
    var isOver: Bool { over.withLock { $0 } }
    func end() { over.withLock { $0 = true } }
}
