import ArgumentParser
import EnrichJobs
import EnrichQueue
import Foundation

/// `enrich enqueue`: loads pairs into the queue from CSV or a SQL query.
struct EnqueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enqueue",
        abstract: "Add (OrganizationId, UserId) pairs to the queue from a CSV file, standard input or a SQL query.",
        discussion: """
            CSV input needs the header OrganizationId,UserId. The whole input is loaded in one transaction: \
            any bad line (wrong header, missing field, empty or over-256-character id, bad UTF-8) rejects the \
            file with its line number and nothing is enqueued (exit 3). A pair already pending or running is \
            not duplicated; a pair already done or failed is queued again (re-sync).
            """
    )

    @OptionGroup var database: DatabaseOptions

    @Argument(help: ArgumentHelp("CSV file to read, or - for standard input.", valueName: "file"))
    var file: String?

    @Option(
        name: .customLong("from-sql"),
        help: ArgumentHelp(
            "A SELECT returning two columns (organization id, user id), run in the queue's database.",
            valueName: "query"
        )
    )
    var fromSQL: String?

    @Option(help: ArgumentHelp("OrganizationId of one pair to enqueue (with --user): a quick retry.", valueName: "id"))
    var org: String?

    @Option(help: ArgumentHelp("UserId of one pair to enqueue (with --org).", valueName: "id"))
    var user: String?

    @Option(
        name: .customLong("max-attempts"),
        help: ArgumentHelp("Attempts each new row gets before it is marked failed (default 5).", valueName: "n")
    )
    var maxAttempts: Int32 = 5

    @Flag(help: "Print the summary as JSON.")
    var json = false

    func validate() throws {
        if (org == nil) != (user == nil) { throw ValidationError("give --org and --user together (one pair)") }
        let sources = [file != nil, fromSQL != nil, org != nil].filter { $0 }.count
        if sources > 1 { throw ValidationError("give one of: a CSV file, --from-sql, or --org with --user") }
        if sources == 0 {
            throw ValidationError("give a CSV file (or - for standard input), --from-sql, or --org with --user")
        }
        for (flag, id) in [("--org", org), ("--user", user)] {
            guard let id else { continue }
            if id.trimmingCharacters(in: .whitespaces).isEmpty { throw ValidationError("\(flag) is empty") }
            if id.count > PairCSVReader.maximumIDLength {
                throw ValidationError("\(flag) is over \(PairCSVReader.maximumIDLength) characters")
            }
            if id.contains("\u{0}") { throw ValidationError("\(flag) holds a NUL character") }
        }
        if maxAttempts < 1 { throw ValidationError("--max-attempts must be at least 1") }
    }

    func run() async throws {
        try await reportingErrors {
            let logger = try database.makeLogger()
            let configuration = try database.configuration()
            let maxAttempts = self.maxAttempts
            let summary = try await Database.withDatabase(configuration, logger: logger) { db in
                let queue = Queue(database: db)
                if let fromSQL {
                    return try await queue.enqueue(fromSQL: fromSQL, maxAttempts: maxAttempts)
                }
                if let org, let user {
                    var pending: [Pair]? = [Pair(organizationId: org, userId: user)]
                    return try await queue.enqueue(maxAttempts: maxAttempts) {
                        defer { pending = nil }
                        return pending
                    }
                }
                let reader = try PairCSVReader(path: file ?? "-")
                return try await queue.enqueue(maxAttempts: maxAttempts) { try reader.nextChunk() }
            }
            if json {
                print(String(decoding: try JSONEncoder.sorted.encode(summary), as: UTF8.self))
            } else {
                print(
                    "read \(summary.read) pairs: \(summary.inserted) new, \(summary.requeued) queued again "
                        + "(were done or failed), \(summary.alreadyQueued) already queued"
                )
            }
            return EnrichExitCode.success
        }
    }
}

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }
}
