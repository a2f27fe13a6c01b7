import ArgumentParser
import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichWorker
import Foundation

/// `enrich benchmark-database` (hidden; used by `scripts/bench`): the database-only ceiling of a run.
///
/// Drains the queue with the worker's own statements and batch sizes, but no HTTP: two loops (the worker's
/// claimer and writer run concurrently) each claim a batch and complete it with a fixed context. What it
/// reaches is the most any `enrich run` against this database could reach.
struct DatabaseCeilingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "benchmark-database",
        abstract: "Drain the queue with claim + complete only, no API calls, and print rows/s as JSON.",
        shouldDisplay: false
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: ArgumentHelp("Rows per claim (the worker's default, 500).", valueName: "rows"))
    var claimBatch = WorkerConfiguration().effectiveClaimBatch

    @Option(help: ArgumentHelp("Concurrent claim + complete loops.", valueName: "n"))
    var loops = 2

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let (claimBatch, loops) = (claimBatch, loops)
            let (rows, seconds) = try await Database.withDatabase(try database.configuration(), logger: logger) { db in
                let queue = Queue(database: db)
                try await queue.refreshStatisticsIfStale()  // as a run does at its start
                let started = ContinuousClock.now
                let rows = try await withThrowingTaskGroup(of: Int.self) { group in
                    for loop in 0..<loops {
                        group.addTask { try await Self.drain(queue, owner: "ceiling-\(loop)", batch: claimBatch) }
                    }
                    return try await group.reduce(0, +)
                }
                return (rows, started.duration(to: .now))
            }
            let elapsed = seconds.inSeconds
            print(
                #"{"rows": \#(rows), "seconds": \#(String(format: "%.3f", elapsed)), "rows_per_second": \#(String(format: "%.1f", Double(rows) / elapsed))}"#
            )
            return EnrichExitCode.success
        }
    }

    private static func drain(_ queue: Queue, owner: String, batch: Int) async throws -> Int {
        let context = CommerceContext(customerNumber: "CN-1", priceTier: "Retail", currencyCode: "USD")
        var total = 0
        while true {
            let items = try await queue.claim(owner: owner, limit: batch, lease: .seconds(120)).items
            if items.isEmpty { return total }
            _ = try await queue.complete(items.map { Completion(item: $0, context: context) }, owner: owner)
            total += items.count
        }
    }
}
