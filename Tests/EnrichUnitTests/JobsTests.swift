import EnrichCore
import EnrichJobs
import EnrichQueue
import Foundation
import Testing

@Suite("Job definitions (parsing)")
struct JobDefinitionTests {
    func parse(_ json: String, path: String = "jobs/nightly.json") throws(InputError) -> JobDefinition {
        try JobDefinition.parse(Data(json.utf8), path: path)
    }

    @Test("a full definition: name from the file, source, settings by name as text")
    func full() throws {
        let job = try parse(
            """
            {"description": "d", "source": {"sql": "SELECT o, u FROM t"}, "concurrency": 8, "rate": 250.5,
             "max-attempts": 3, "lease": 90, "shutdown-grace": 0, "api-url": "http://sim:8080"}
            """
        )
        #expect(job.name == "nightly" && job.description == "d" && job.source == .sql("SELECT o, u FROM t"))
        #expect(
            job.settings == [
                "concurrency": "8", "rate": "250.5", "max-attempts": "3", "lease": "90", "shutdown-grace": "0",
                "api-url": "http://sim:8080",
            ]
        )
        #expect(job.target == nil)
        let queued = try parse(#"{"source": "queue"}"#, path: "/etc/enrich/jobs/drain.json")
        #expect(queued.source == .queue && queued.name == "drain" && queued.settings.isEmpty)
        let targeted = try parse(#"{"source": "queue", "target": {"sql": "UPDATE app.t SET c = 1"}}"#)
        #expect(targeted.target == "UPDATE app.t SET c = 1")
    }

    @Test(
        "mistakes are named by file and key",
        arguments: [
            (#"{"source": "queue", "concurency": 4}"#, "jobs/nightly.json: concurency: unknown key (known keys: "),
            (#"{"source": "queue", "concurrency": 2.5}"#, "jobs/nightly.json: concurrency: expected a whole number"),
            (
                #"{"source": "queue", "concurrency": true}"#,
                "concurrency: expected a whole number from 1 to 4096, got true"
            ),
            (#"{"source": "queue", "rate": 0}"#, "jobs/nightly.json: rate: expected a number above 0, got 0"),
            (#"{"source": "queue", "api-url": 5}"#, "api-url: expected a non-empty string, got 5"),
            (#"{"source": "everything"}"#, #"jobs/nightly.json: source: expected "queue" or {"sql": "SELECT ...""#),
            (#"{"source": {"sql": "  "}}"#, "jobs/nightly.json: source.sql: expected a non-empty SELECT"),
            (#"{"source": {"sql": "SELECT 1", "table": "x"}}"#, "jobs/nightly.json: source.table: unknown key"),
            (#"{"concurrency": 4}"#, "jobs/nightly.json: source: missing"),
            (#"{"source": "queue", "target": "UPDATE t"}"#, #"jobs/nightly.json: target: expected {"sql": "..."}"#),
            (#"{"source": "queue", "target": {"sql": ""}}"#, "jobs/nightly.json: target.sql: expected a non-empty SQL"),
            (#"{"source": "queue", "target": {"sql": "x", "db": 1}}"#, "jobs/nightly.json: target.db: unknown key"),
            (#"["queue"]"#, "jobs/nightly.json: expected a JSON object at the top level"),
            (#"{"source": "queue"\n "concurrency": 4}"#, "jobs/nightly.json:1: not valid JSON"),
        ]
    )
    func mistakes(json: String, message: String) {
        #expect {
            _ = try parse(json)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test("a job name must be usable as a lock and status key")
    func badName() {
        #expect(throws: InputError.self) { _ = try parse(#"{"source": "queue"}"#, path: "jobs/night ly.json") }
        #expect(JobName.isValid("nightly-sync_2") && !JobName.isValid("a/b") && !JobName.isValid(""))
    }

    @Test("a missing job names the path and lists the jobs that exist")
    func missing() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Data(#"{"source": "queue"}"#.utf8).write(to: directory.appendingPathComponent("drain.json"))
        #expect {
            _ = try JobDefinition.load("nightly", directory: directory.path)
        } throws: { error in
            "\(error)".contains("nightly.json: job definition not found") && "\(error)".contains("(jobs in ")
                && "\(error)".contains(": drain)")
        }
        let found = try JobDefinition.load("drain", directory: directory.path)
        #expect(found.source == .queue)
    }
}

@Suite("status --check verdicts and durations")
struct RunHealthTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func run(_ state: RunState, startedAgo: Double = 3_600, heartbeatAgo: Double = 3_500) -> JobRun {
        JobRun(
            id: 41,
            jobName: "nightly",
            trigger: .cron,
            host: "box1",
            pid: 77,
            state: state,
            startedAt: now - startedAgo,
            finishedAt: state == .running ? nil : now - heartbeatAgo,
            heartbeatAt: now - heartbeatAgo,
            totalItems: 1_000,
            counters: RunCounters(succeeded: 990, failed: 10),
            lastError: state == .failed ? "invalid API credentials" : nil
        )
    }

    func judge(_ run: JobRun?, maxAge: Duration? = nil) -> RunHealth {
        RunHealth.judge(job: "nightly", latest: run, now: now, maxAge: maxAge, staleAfter: .seconds(60))
    }

    @Test("each state, stuck runs and old runs")
    func verdicts() {
        #expect(judge(nil) == RunHealth(isProblem: true, line: "CRITICAL: job nightly has never run"))
        #expect(
            judge(run(.succeeded))
                == RunHealth(isProblem: false, line: "OK: job nightly run 41 succeeded 1h00m ago: 990 done, 10 failed")
        )
        #expect(judge(run(.failed)).line == "CRITICAL: job nightly run 41 failed 1h00m ago: invalid API credentials")
        #expect(judge(run(.interrupted)).isProblem && judge(run(.abandoned)).isProblem)
        let live = judge(run(.running, heartbeatAgo: 5))
        #expect(
            !live.isProblem
                && live.line == "OK: job nightly run 41 is running (started 1h00m ago): 990 of 1000 done, 10 failed"
        )
        let stuck = judge(run(.running, heartbeatAgo: 600))
        #expect(
            stuck.isProblem && stuck.line.contains("is stuck")
                && stuck.line.contains("no heartbeat for 10m00s (host box1, pid 77)")
        )
        let old = judge(run(.succeeded, startedAgo: 30 * 3_600), maxAge: .seconds(26 * 3_600))
        #expect(old.isProblem && old.line.contains("started 1d6h ago, more than --max-age 1d2h"))
        #expect(!judge(run(.succeeded, startedAgo: 25 * 3_600), maxAge: .seconds(26 * 3_600)).isProblem)
        let hung = judge(run(.running, startedAgo: 30 * 3_600, heartbeatAgo: 5), maxAge: .seconds(26 * 3_600))
        #expect(hung.isProblem && hung.line.contains("is still running after 1d6h, more than --max-age 1d2h"))
    }

    @Test("a live run that holds rows but completes none is stuck; one whose process is gone is dead")
    func stalledAndDeadRuns() {
        var stalled = run(.running, heartbeatAgo: 2)
        stalled.stalledSince = now - 95
        let verdict = judge(stalled)
        #expect(verdict.isProblem)
        #expect(
            verdict.line
                == "CRITICAL: job nightly run 41 is stuck: it holds rows but has completed none for 1m35s while the "
                + "database and the API answer (host box1, pid 77); it stops itself at its stall timeout"
        )
        let dead = RunHealth.judge(
            job: "nightly",
            latest: run(.running, heartbeatAgo: 3),
            now: now,
            maxAge: nil,
            staleAfter: .seconds(60),
            isDead: true
        )
        #expect(dead.isProblem && dead.line.contains("is dead: its process is gone (host box1, pid 77)"))
    }

    @Test("durations: 26h, 90m, 1h30m, 2d, plain seconds; nonsense refused")
    func durations() {
        #expect(DurationText.parse("26h") == .seconds(93_600))
        #expect(DurationText.parse("90m") == .seconds(5_400))
        #expect(DurationText.parse("1h30m") == .seconds(5_400))
        #expect(DurationText.parse("2d") == .seconds(172_800))
        #expect(DurationText.parse("3600") == .seconds(3_600))
        for bad in ["", "h", "26x", "-5", "0", "5h3"] { #expect(DurationText.parse(bad) == nil, "\(bad)") }
        #expect(
            DurationText.format(5) == "5s" && DurationText.format(3_725) == "1h02m"
                && DurationText.format(90_000) == "1d1h"
        )
    }
}
