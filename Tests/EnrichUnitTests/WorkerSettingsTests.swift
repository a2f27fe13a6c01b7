import ArgumentParser
import EnrichQueue
import Foundation
import Testing

@testable import EnrichCLI
@testable import EnrichWorker

@Suite("Progress line")
struct ProgressLineTests {
    @Test("the progress line shows done/total, rate, 429s and ETA")
    func progressLine() {
        var snapshot = RunAccounting.Snapshot()
        snapshot.counters.succeeded = 4_000
        snapshot.counters.failed = 210
        snapshot.counters.throttled = 3
        let line = ProgressPrinter.line(
            WorkerProgress(
                runID: 7,
                statistics: snapshot,
                totalItems: 10_000,
                elapsed: .seconds(5),
                itemsPerSecond: 1_000,
                sendRate: 300,
                logins: 1
            )
        )
        #expect(line == "run 7: 4210/10000 (42%) · 1000 rows/s · 210 failed · 429s 3 · send rate 300/s · ETA 6s")
    }
}

@Suite("Database outage budget (pure)")
struct OutageBudgetTests {
    typealias Instant = ManualClock.Instant
    func at(_ seconds: Double) -> Instant { Instant(offset: .seconds(seconds)) }

    @Test("failures are retried until they have lasted the limit; a success ends the outage")
    func budget() {
        var budget = OutageBudget<Instant>(limit: .seconds(60))
        #expect(budget.recordFailure(startedAt: at(0), now: at(0)) == nil)
        #expect(budget.recordFailure(startedAt: at(58), now: at(59)) == nil)
        budget.recordSuccess()
        #expect(budget.failingSince == nil)
        #expect(budget.recordFailure(startedAt: at(100), now: at(100)) == nil)
        #expect(budget.recordFailure(startedAt: at(150), now: at(160)) == .seconds(60))
    }

    @Test("the outage counts from the start of the first statement that got no answer, not from its failure")
    func outageStartsWhenTheStatementStarted() {
        var budget = OutageBudget<Instant>(limit: .seconds(10))
        // A statement started at 0 waits for a connection the pool cannot open: its deadline is the end of
        // the budget, and when it fails there the limit is reached at once.
        #expect(budget.deadline(forStatementAt: at(0), minimum: .seconds(1)) == at(10))
        #expect(budget.recordFailure(startedAt: at(0), now: at(10)) == .seconds(10))
    }

    @Test("a statement started during an outage gets what is left of the budget, but at least the minimum")
    func deadlines() {
        var budget = OutageBudget<Instant>(limit: .seconds(10))
        #expect(budget.recordFailure(startedAt: at(2), now: at(3)) == nil)
        #expect(budget.failingSince == at(2))
        #expect(budget.deadline(forStatementAt: at(4), minimum: .seconds(1)) == at(12))
        #expect(budget.deadline(forStatementAt: at(11.5), minimum: .seconds(1)) == at(12.5))
        // A failure of a statement that started earlier moves the outage's start back.
        #expect(budget.recordFailure(startedAt: at(1), now: at(5)) == nil)
        #expect(budget.failingSince == at(1))
        #expect(budget.recordFailure(startedAt: at(6), now: at(11)) == .seconds(10))
    }

    @Test("a zero limit gives up on the first failure")
    func zeroLimit() {
        var budget = OutageBudget<Instant>(limit: .zero)
        #expect(budget.recordFailure(startedAt: at(5), now: at(5)) == .zero)
    }
}

@Suite("Worker configuration validation")
struct WorkerConfigurationTests {
    @Test("settings that cannot work together are rejected, naming the setting (no flag: that is the CLI's)")
    func validation() {
        var configuration = WorkerConfiguration()
        configuration.heartbeatInterval = .seconds(100)
        do {
            try configuration.validate()
            Issue.record("accepted a heartbeat of more than half the lease")
        } catch {
            #expect(error.code == .invalidSetting && error.setting == "heartbeat")
            #expect(error.description == "heartbeat must be under half the lease")
        }
        configuration = WorkerConfiguration()
        configuration.claimBatch = 0
        do {
            try configuration.validate()
            Issue.record("accepted a claim batch of 0")
        } catch {
            #expect(error.code == .invalidSetting && error.setting == "claim-batch")
        }
    }
}

@Suite("Database errors: which ones the worker retries")
struct DatabaseErrorTransienceTests {
    @Test(
        "lost connections, deadlocks, restarts and resource shortages are retried; rejected statements are not",
        arguments: [
            ("08006", true), ("40001", true), ("40P01", true), ("53300", true), ("57P01", true), ("55P03", true),
            ("22021", false), ("42P01", false), ("23505", false),
        ]
    )
    func transience(sqlState: String, transient: Bool) {
        #expect(DatabaseError(.queryFailed, "x", sqlState: sqlState).isTransient == transient)
    }

    @Test("a connection that cannot be made or a prepared statement gone is transient; an unmigrated schema is not")
    func codes() {
        #expect(DatabaseError(.cannotConnect, "x").isTransient)
        #expect(DatabaseError(.preparedStatementLost, "x").isTransient, "prepared again on the next attempt")
        #expect(!DatabaseError(.schemaNotMigrated, "x").isTransient)
    }
}
