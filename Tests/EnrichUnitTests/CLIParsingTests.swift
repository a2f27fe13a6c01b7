import ArgumentParser
import EnrichQueue
import EnrichSettings
import Foundation
import NymbleSimulator
import Testing

@testable import EnrichCLI

@Suite("Command-line parsing")
struct CLIParsingTests {
    @Test("simulate reads flags first, then the environment, then defaults")
    func simulateOptions() throws {
        let command = try #require(
            try EnrichCommand.parseAsRoot([
                "simulate", "--rate", "300", "--retry-after", "http-date", "--latency", "20ms-80ms",
            ])
                as? SimulateCommand
        )
        let environment = Environment([
            "ENRICH_SIM_RATE": "5", "ENRICH_SIM_ERROR_RATE": "0.1", "NYMBLE_CLIENT_ID": "abc",
        ])
        let configuration = try command.sources(environment).simulatorConfiguration()
        #expect(configuration.accessRate == 300)
        #expect(configuration.retryAfterStyle == .httpDate)
        #expect(configuration.latency == .init(minimum: .milliseconds(20), maximum: .milliseconds(80)))
        #expect(configuration.serverErrorRate == 0.1)
        #expect(configuration.clientId == "abc")
        #expect(configuration.port == 8080)
    }

    @Test("simulate rejects a share outside 0...1 and an unknown Retry-After form, naming flag or variable")
    func simulateValidation() throws {
        let command = try #require(
            try EnrichCommand.parseAsRoot(["simulate", "--error-rate", "1.5"]) as? SimulateCommand
        )
        let error = #expect(throws: SettingError.self) {
            try command.sources(Environment([:])).simulatorConfiguration()
        }
        #expect(error?.description == "--error-rate: expected a share from 0 to 1, got \"1.5\"")
        let other = try #require(try EnrichCommand.parseAsRoot(["simulate"]) as? SimulateCommand)
        let variable = #expect(throws: SettingError.self) {
            try other.sources(Environment(["ENRICH_SIM_RETRY_AFTER": "later"])).simulatorConfiguration()
        }
        #expect(variable?.description.hasPrefix("environment variable ENRICH_SIM_RETRY_AFTER: expected one of") == true)
    }

    @Test("a malformed environment variable is named in the error")
    func environmentErrorsNameTheVariable() {
        let error = #expect(throws: SettingError.self) {
            try Environment(["ENRICH_DB_CONNECTIONS": "many"]).parsed("ENRICH_DB_CONNECTIONS", as: Int.self)
        }
        #expect(error?.description.contains("ENRICH_DB_CONNECTIONS") == true)
    }

    @Test("NAME_FILE supplies a secret when NAME is unset")
    func fileSecrets() throws {
        let path = "/tmp/enrich-test-secret-\(UInt32.random(in: 0...UInt32.max))"
        try "postgres://u:pw@h/db\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try Environment(["DATABASE_URL_FILE": path]).value("DATABASE_URL") == "postgres://u:pw@h/db")
        #expect(try Environment(["DATABASE_URL": "x", "DATABASE_URL_FILE": path]).value("DATABASE_URL") == "x")
        #expect(throws: SettingError.self) {
            try Environment(["DATABASE_URL_FILE": "/nonexistent"]).value("DATABASE_URL")
        }
    }

    @Test("enqueue needs exactly one source")
    func enqueueSources() {
        #expect(throws: (any Error).self) { try EnrichCommand.parseAsRoot(["enqueue"]) }
        #expect(throws: (any Error).self) {
            try EnrichCommand.parseAsRoot(["enqueue", "a.csv", "--from-sql", "SELECT 1, 2"])
        }
        #expect(throws: Never.self) { try EnrichCommand.parseAsRoot(["enqueue", "-"]) }
        #expect(throws: Never.self) { try EnrichCommand.parseAsRoot(["enqueue", "--org", "o", "--user", "u"]) }
        for wrong in [["--org", "o"], ["--org", "o", "--user", "u", "a.csv"], ["--org", " ", "--user", "u"]] {
            #expect(throws: (any Error).self, "\(wrong)") { try EnrichCommand.parseAsRoot(["enqueue"] + wrong) }
        }
    }

    @Test("status --watch takes optional seconds; failures and requeue take the same filters")
    func watchAndFilters() throws {
        #expect(throws: Never.self) { try EnrichCommand.parseAsRoot(["status", "--watch"]) }
        #expect(throws: Never.self) { try EnrichCommand.parseAsRoot(["status", "--watch", "5"]) }
        for wrong in [["status", "5"], ["status", "--watch", "0"], ["status", "--watch", "--json"]] {
            #expect(throws: (any Error).self, "\(wrong)") { try EnrichCommand.parseAsRoot(wrong) }
        }
        let requeue = try #require(
            try EnrichCommand.parseAsRoot(["requeue", "--run", "4", "--org", "o", "--reason", "400", "--dry-run"])
                as? RequeueCommand
        )
        #expect(requeue.filters.filter == FailureFilter(run: 4, organization: "o", reason: "400") && requeue.dryRun)
        #expect(throws: (any Error).self) { try EnrichCommand.parseAsRoot(["failures", "--limit", "0"]) }
    }

    @Test("the terminal display: a log line goes above the bar, whole, and the bar is redrawn below it")
    func terminalDisplay() {
        let written = Locked<[String]>([])
        let display = TerminalDisplay { text in written.withLock { $0.append(text) } }
        display.log("before\n")
        display.showBar("[██░░] 50%")
        display.log("a notice\n")
        display.endBar()
        display.log("after\n")
        let clear = "\r\u{1B}[2K"
        #expect(
            written.withLock { $0 }
                == ["before\n", clear + "[██░░] 50%", clear + "a notice\n" + "[██░░] 50%", "\n", "after\n"]
        )
        #expect(TerminalDisplay.fit(String(repeating: "x", count: 200), columns: 80).count == 79)
        #expect(TerminalDisplay.fit("short", columns: 80) == "short")
    }

    @Test("the command line adds what to do to a library's error: an unmigrated schema says to run enrich migrate")
    func unmigratedSchemaAdvice() {
        let error = DatabaseError(.schemaNotMigrated, "count rows failed: relation \"x.queue_summary\" does not exist")
        #expect(
            message(for: error)
                == "count rows failed: relation \"x.queue_summary\" does not exist. Run `enrich migrate` first."
        )
        #expect(message(for: DatabaseError(.queryFailed, "boom")) == "boom")
    }
}
