import EnrichQueue
import Foundation
import NymbleSimulator
import Testing

/// The live display in a real terminal: `enrich run` inside tmux (its own server socket), the screen read
/// with `capture-pane` while the run goes on. scripts/test installs tmux when it is missing.
@Suite("Live display in a real terminal (tmux)", .freshSchema, .timeLimit(.minutes(3)))
struct TerminalDisplayTests {
    static let tmux = "/usr/bin/tmux"

    /// Runs `command` in a 120×40 tmux pane on a server of its own and returns the screen as `capture-pane`
    /// read it every 100 ms until the pane printed `EXIT=`. One shell drives tmux from start to end: a
    /// tmux server started by a `Process` of this test did not outlive it.
    static func screens(of command: String, environment: [String: String]) async throws -> [String] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tmux-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = "enrich-test-\(UUID().uuidString.prefix(8))"
        let script = """
            tmux -L \(socket) -f /dev/null new-session -d -s run -x 120 -y 40 "$ENRICH_TMUX_COMMAND" || exit 3
            i=0
            while [ $i -lt 900 ]; do
                tmux -L \(socket) capture-pane -p -J -t run > "\(directory.path)/$i.screen" 2>&1
                grep -q EXIT= "\(directory.path)/$i.screen" && break
                i=$((i + 1)); sleep 0.1
            done
            tmux -L \(socket) kill-server
            """
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", script]
        shell.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
            .merging(["ENRICH_TMUX_COMMAND": command, "TERM": "xterm-256color"]) { _, new in new }
        try shell.run()
        let deadline = ContinuousClock.now + .seconds(150)
        while shell.isRunning {
            if ContinuousClock.now > deadline {
                Issue.record("the tmux session did not end within 150 s")
                kill(shell.processIdentifier, SIGKILL)
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .compactMap { Int($0.replacingOccurrences(of: ".screen", with: "")) }.sorted()
        return names.map {
            (try? String(contentsOfFile: directory.appendingPathComponent("\($0).screen").path, encoding: .utf8)) ?? ""
        }
    }

    static func shellQuoted(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    @Test("on a terminal, log lines scroll above a progress bar redrawn below them: no line ever holds both")
    func logLinesAboveTheBar() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.tmux),
            "tmux is needed (scripts/test installs it)"
        )
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(2_400), into: database)
        var simulator = SimulatorConfiguration()
        simulator.accessRate = 300
        try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { _, baseURL in
            let environment = try WorkerProcessTests.environment(database, baseURL: baseURL)
            let command =
                Self.shellQuoted(try EnrichProcess.executable.path)
                + " run --progress line --concurrency 32 --heartbeat 1; echo EXIT=$?; sleep 120"
            let screens = try await Self.screens(of: command, environment: environment)
            let last = try #require(screens.last)
            #expect(last.contains("EXIT=0"), "the run ended well:\n\(last)")

            let isBar = { (line: Substring) in line.contains("█") || line.contains("░") }
            let isLog = { (line: Substring) in
                line.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (info|notice|warning)"#, options: .regularExpression)
                    != nil
            }
            var barShownLast = 0
            var logLinesAboveBar = 0
            for screen in screens {
                let lines = screen.split(separator: "\n", omittingEmptySubsequences: false)
                for line in lines where isBar(line) {
                    #expect(line.hasPrefix("["), "the bar starts its line: \(line)")
                    #expect(!isLog(line) && !line.contains(" enrich: "), "a log line was written into the bar: \(line)")
                }
                for line in lines where line.contains(" enrich: ") {
                    #expect(isLog(line) && !isBar(line), "a log line is whole: \(line)")
                }
                let shown = lines.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
                if let final = shown.last, isBar(final), !screen.contains("EXIT=") {
                    barShownLast += 1
                    if shown.dropLast().contains(where: isLog) { logLinesAboveBar += 1 }
                }
            }
            #expect(barShownLast >= 3, "the bar was seen on the last line while running (\(barShownLast) screens)")
            #expect(logLinesAboveBar >= 1, "log lines were seen above the bar")
            #expect(last.contains("429"), "the 429 notices and the bar's 429 count are on screen:\n\(last)")
        }
    }
}
