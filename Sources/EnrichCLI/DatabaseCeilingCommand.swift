import ArgumentParser
import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichWorker
import Foundation

/// `enrich benchmark-database` (hidden; used by `scripts/bench`): the database-only ceiling of a run.
///
/// Drains the queue the way a run does, with the worker's own statements and batch sizes, but no HTTP: one
/// claimer and one writer at once. While one claimed batch is written back (in write batches, each completed
/// with a fixed context), the next is claimed. What it reaches is the most any `enrich run` against this
/// database could reach. (Two loops each claiming and completing in turn, the earlier shape, reached less:
/// their claims skip each other's locked rows, and PostgreSQL spent 37–45 µs per row instead of 34–36.)
struct DatabaseCeilingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "benchmark-database",
        abstract: "Drain the queue with claim + complete only, no API calls, and print rows/s as JSON.",
        shouldDisplay: false
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: ArgumentHelp("Rows per claim; the default is the worker's.", valueName: "rows"))
    var claimBatch = WorkerConfiguration().effectiveClaimBatch

    @Option(help: ArgumentHelp("Rows per write-back statement; the default is the worker's.", valueName: "rows"))
    var writeBatch = WorkerConfiguration().writeBatch

    /// The worker's own checks of the two batch sizes.
    func validate() throws {
        var worker = WorkerConfiguration()
        worker.claimBatch = claimBatch
        worker.writeBatch = writeBatch
        try worker.validate()
    }

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let (claimBatch, writeBatch) = (claimBatch, writeBatch)
            let (rows, seconds) = try await Database.withDatabase(try database.configuration(), logger: logger) { db in
                let queue = Queue(database: db)
                try await queue.refreshStatisticsIfStale()  // as a run does at its start
                let started = ContinuousClock.now
                let rows = try await Self.drain(queue, claimBatch: claimBatch, writeBatch: writeBatch)
                return (rows, started.duration(to: .now))
            }
            let elapsed = seconds.inSeconds
            print(
                #"{"rows": \#(rows), "seconds": \#(String(format: "%.3f", elapsed)), "rows_per_second": \#(String(format: "%.1f", Double(rows) / elapsed))}"#
            )
            return EnrichExitCode.success
        }
    }

    /// Claims the next batch while the previous one is written back; returns the rows completed. When a
    /// write-back fails, the claim in flight is cancelled; rows it had already leased stay leased until their
    /// lease expires (a benchmark on a throwaway schema: not worth a release path).
    private static func drain(_ queue: Queue, claimBatch: Int, writeBatch: Int) async throws -> Int {
        @Sendable func claim() async throws -> [LeasedItem] {
            try await queue.claim(owner: "ceiling", limit: claimBatch, lease: .seconds(120)).items
        }
        let context = CommerceContext(customerNumber: "CN-1", priceTier: "Retail", currencyCode: "USD")
        var total = 0
        var items = try await claim()
        while !items.isEmpty {
            async let next = claim()
            for start in stride(from: 0, to: items.count, by: writeBatch) {
                let chunk = items[start..<min(start + writeBatch, items.count)]
                _ = try await queue.complete(chunk.map { Completion(item: $0, context: context) }, owner: "ceiling")
            }
            total += items.count
            items = try await next
        }
        return total
    }
}
