import EnrichCore
import EnrichQueue
import EnrichToken
import EnrichWorker
import Foundation
import Logging
import NymbleAPI
import NymbleSimulator
import PostgresNIO
import Testing

/// Helpers for the end-to-end tests: enqueue pairs, run a worker in process, read back every row.
enum WorkerHarness {
    /// `count` pairs spread over 50 organizations; every `malformedEvery`-th user id is one the API rejects.
    static func pairs(_ count: Int, malformedEvery: Int? = nil, prefix: String = "u") -> [Pair] {
        (1...count).map { index in
            let malformed = malformedEvery.map { index % $0 == 0 } ?? false
            return Pair(
                organizationId: "org_\(index % 50)",
                userId: malformed ? "bad user #\(index)" : "\(prefix)_\(index)"
            )
        }
    }

    static func enqueue(_ pairs: [Pair], into database: Database, maxAttempts: Int32 = 5) async throws {
        var chunks: [[Pair]] = []
        var index = 0
        while index < pairs.count {
            chunks.append(Array(pairs[index..<min(index + 5000, pairs.count)]))
            index += 5000
        }
        let box = ChunkBox(chunks)
        _ = try await Queue(database: database).enqueue(maxAttempts: maxAttempts) { box.next() }
    }

    /// A configuration suited to tests: fast retries and heartbeats, the given tweaks applied.
    static func configuration(_ tweak: (inout WorkerConfiguration) -> Void = { _ in }) -> WorkerConfiguration {
        var configuration = WorkerConfiguration()
        configuration.retryBackoff = .init(base: .milliseconds(20), cap: .milliseconds(200))
        configuration.heartbeatInterval = .seconds(1)
        configuration.pollInterval = .seconds(1)
        configuration.lease = .seconds(30)
        tweak(&configuration)
        return configuration
    }

    /// Runs one worker to completion against `client`, with its own shared token store.
    static func run(
        _ database: Database,
        client: NymbleClient,
        configuration: WorkerConfiguration,
        credentials: NymbleCredentials = simulatorCredentials,
        logger: Logger = quietLogger
    ) async throws -> RunReport {
        let store = SharedTokenStore(clock: ContinuousClock(), logger: logger) { try await client.login(credentials) }
        return try await Worker(
            configuration: configuration,
            database: database,
            api: client,
            tokens: store,
            logger: logger
        ).execute()
    }

    struct Row: Sendable {
        var pair: Pair
        var state: String
        var attempts: Int32
        var context: CommerceContext
        var enriched: Bool
        var lastError: String?
        var leaseOwner: String?
    }

    static func rows(_ database: Database) async throws -> [Row] {
        let schema = database.configuration.schema
        let rows = try await database.client.query(
            """
            SELECT organization_id, user_id, state, attempts, customer_number, price_tier, currency_code,
                enriched_at IS NOT NULL, last_error, lease_owner
            FROM \(unescaped: schema).queue_items ORDER BY id
            """,
            logger: TestDatabase.logger
        ).collect()
        return try rows.map { row in
            let (organization, user, state, attempts, customer, tier, currency, enriched, lastError, owner) =
                try row.decode((String, String, String, Int32, String?, String?, String?, Bool, String?, String?).self)
            return Row(
                pair: Pair(organizationId: organization, userId: user),
                state: state,
                attempts: attempts,
                context: CommerceContext(customerNumber: customer, priceTier: tier, currencyCode: currency),
                enriched: enriched,
                lastError: lastError,
                leaseOwner: owner
            )
        }
    }

    /// The context the simulator answers for `pair`.
    static func expected(_ pair: Pair) -> CommerceContext {
        let answer = CommerceDirectory.context(organizationId: pair.organizationId, userId: pair.userId)
        return CommerceContext(
            customerNumber: answer.customerNumber,
            priceTier: answer.priceTier,
            currencyCode: answer.currencyCode
        )
    }

    /// Checks the invariant every run must keep: each row is done with exactly the simulator's context,
    /// or failed with a reason; none is pending, running or lost.
    static func expectAllSettled(
        _ rows: [Row],
        expectedCount: Int,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(rows.count == expectedCount, sourceLocation: sourceLocation)
        for row in rows {
            switch row.state {
            case "done":
                #expect(
                    row.enriched && row.context == expected(row.pair),
                    "\(row.pair)",
                    sourceLocation: sourceLocation
                )
                #expect(row.leaseOwner == nil, sourceLocation: sourceLocation)
            case "failed":
                #expect(
                    row.lastError?.isEmpty == false,
                    "\(row.pair) failed without a reason",
                    sourceLocation: sourceLocation
                )
            default:
                Issue.record("\(row.pair) left \(row.state)", sourceLocation: sourceLocation)
            }
        }
    }
}

/// The `enrich` executable built next to the test bundle, run as a child process.
struct EnrichProcess {
    let process: Process
    let output: URL
    let errors: URL

    static var executable: URL {
        get throws {
            let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            for candidate in [directory, URL(fileURLWithPath: ".build/debug")] {
                let url = candidate.appendingPathComponent("enrich")
                if FileManager.default.isExecutableFile(atPath: url.path) { return url }
            }
            throw MissingExecutable()
        }
    }

    struct MissingExecutable: Error, CustomStringConvertible {
        var description: String {
            "the enrich executable is not built: run `swift build --build-tests` (scripts/test does)"
        }
    }

    /// Starts `enrich <arguments>` with `environment` added to this process's environment.
    static func start(_ arguments: [String], environment: [String: String]) throws -> EnrichProcess {
        let process = Process()
        process.executableURL = try executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("enrich-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let output = directory.appendingPathComponent("stdout")
        let errors = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        return EnrichProcess(process: process, output: output, errors: errors)
    }

    /// Waits for the process to exit (at most `timeout`, then kills it) and returns its exit status.
    func wait(timeout: Duration = .seconds(120)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                kill(process.processIdentifier, SIGKILL)
                Issue.record("enrich did not exit within \(timeout)")
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    var standardOutput: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }
    var standardError: String { (try? String(contentsOf: errors, encoding: .utf8)) ?? "" }
}
