import EnrichJobs
import EnrichSettings
import EnrichWorker
import Foundation
import NymbleAPI
import Testing

@testable import EnrichCLI

/// Settings, each described once: flags > environment > job file > default, with errors naming where a
/// value came from.
@Suite("Settings: flag > environment > job file > default")
struct SettingsTests {
    let base = [
        "DATABASE_URL": "postgres://enrich@db:5432/app", "NYMBLE_ORG_CODE": "org_1", "NYMBLE_CLIENT_ID": "client_1",
        "NYMBLE_CLIENT_SECRET": "s3cret-value",
    ]

    func plan(_ arguments: [String] = [], _ environment: [String: String] = [:]) throws -> RunPlan {
        let flags = try SettingSources.parseFlags(arguments, allowed: Settings.database + Settings.run)
        return try RunPlan.resolve(flags: flags, environment: Environment(base.merging(environment) { _, new in new }))
    }

    @Test("defaults: drain mode, 32 tasks, adaptive rate, rows keep their own attempts, pool sized to the tasks")
    func defaults() throws {
        let plan = try plan()
        #expect(!plan.worker.follow && plan.worker.concurrency == 32)
        #expect(plan.worker.rateLimit == nil && plan.worker.maxAttempts == nil)
        #expect(plan.worker.lease == .seconds(120) && plan.worker.shutdownGrace == .seconds(30))
        #expect(plan.worker.effectiveClaimBatch == 2_000 && plan.worker.writeBatch == 500)
        #expect(plan.client.maximumConnections == 32)
        #expect(plan.client.baseURL == "https://api.achievemomentum.com")
        #expect(plan.credentials.secret == "s3cret-value" && plan.credentials.dialect == .nymble)
        #expect(plan.database.host == "db" && plan.database.schema == "enrich")
        #expect(plan.metrics == nil && plan.job == nil)
    }

    @Test("flags win over environment variables, which win over defaults; every setting has a flag or says why not")
    func precedence() throws {
        let plan = try plan(
            ["--concurrency", "64", "--shutdown-grace=0", "--follow", "--write-batch", "200", "--max-pause", "60"],
            [
                "ENRICH_CONCURRENCY": "8", "ENRICH_RATE": "250", "ENRICH_LEASE": "45",
                "NYMBLE_BASE_URL": "http://127.0.0.1:9",
                "ENRICH_TRIGGER": "cron", "ENRICH_METRICS_PORT": "9464",
            ]
        )
        #expect(plan.worker.concurrency == 64 && plan.client.maximumConnections == 64)
        #expect(plan.worker.rateLimit == 250 && plan.worker.lease == .seconds(45))
        #expect(plan.worker.follow && plan.worker.trigger == .cron && plan.worker.shutdownGrace == .zero)
        #expect(plan.worker.writeBatch == 200 && plan.worker.maximumPause == .seconds(60))
        #expect(plan.client.baseURL == "http://127.0.0.1:9")
        #expect(plan.metrics?.port == 9464 && plan.metrics?.host == "127.0.0.1")
        for setting in Settings.all where !setting.hasFlag {
            #expect(["client-secret", "password"].contains(setting.name), "\(setting.name) has no flag")
        }
    }

    @Test("the secret can come from a file (NYMBLE_CLIENT_SECRET_FILE); an unreadable one is named")
    func secretFromFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID().uuidString)").path
        try "from-file-secret\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(
            try plan([], ["NYMBLE_CLIENT_SECRET": "", "NYMBLE_CLIENT_SECRET_FILE": path]).credentials.secret
                == "from-file-secret"
        )
        let error = #expect(throws: SettingError.self) {
            try plan([], ["NYMBLE_CLIENT_SECRET": "", "NYMBLE_CLIENT_SECRET_FILE": "/nonexistent"])
        }
        #expect(
            error?.description
                == "environment variable NYMBLE_CLIENT_SECRET_FILE: names /nonexistent, which cannot be read"
        )
    }

    @Test(
        "bad values are named: flag or variable, and what is wrong",
        arguments: [
            (
                ["--concurrency", "0"], [String: String](),
                "--concurrency: expected a whole number from 1 to 4096, got \"0\""
            ),
            (["--lease", "2"], [:], "--lease: lease must be at least 5 seconds"),
            (["--lease=-1"], [:], "--lease: expected a number of seconds above 0, got \"-1\""),
            (["--trigger", "daily"], [:], "--trigger: expected one of cli, cron, got \"daily\""),
            (["--progress", "loud"], [:], "--progress: expected one of auto, line, log, off, got \"loud\""),
            (["--retry-base", "10", "--retry-cap", "1"], [:], "--retry-cap: must be at least the retry base (10s)"),
            ([], ["ENRICH_RATE": "fast"], "environment variable ENRICH_RATE: expected a number above 0, got \"fast\""),
            ([], ["ENRICH_SHUTDOWN_GRACE": "soon"], "environment variable ENRICH_SHUTDOWN_GRACE: expected a number"),
            ([], ["NYMBLE_BASE_URL": "not a url"], "environment variable NYMBLE_BASE_URL: 'not a url' is not an API"),
        ]
    )
    func badValues(arguments: [String], environment: [String: String], message: String) {
        let error = #expect(throws: SettingError.self) { try plan(arguments, environment) }
        #expect(error?.description.hasPrefix(message) == true, "\(error?.description ?? "")")
    }

    static let b2bProfile = [
        "--dialect", "b2b", "--username", "svc", "--api-url", "https://b2b.example.com", "--call-path", "/lookup",
        "--call-organization-field", "org", "--call-user-field", "user", "--answer-customer-number", "cn",
        "--answer-price-tier", "tier", "--answer-currency-code", "ccy",
    ]

    @Test("a profile: the dialect's credentials, the base URL and the call; what another dialect must name")
    func profiles() throws {
        let b2b = try plan(Self.b2bProfile, ["API_PASSWORD": "pw"])
        #expect(b2b.credentials == .b2b(username: "svc", password: "pw") && b2b.client.dialect == .b2b)
        #expect(b2b.client.call.path == "/lookup" && b2b.client.call.method == .post)
        #expect(b2b.client.call.answer == AnswerFields(customerNumber: "cn", priceTier: "tier", currencyCode: "ccy"))
        let apex = try plan(
            Self.b2bProfile.map { $0 == "b2b" ? "achieveapex" : $0 } + ["--email", "e@x", "--call-method", "get"],
            ["API_PASSWORD": "pw"]
        )
        #expect(apex.credentials == .achieveApex(email: "e@x", password: "pw") && apex.client.call.method == .get)
        let missing = #expect(throws: SettingError.self) { try plan(["--dialect", "b2b", "--username", "u"]) }
        #expect(
            missing?.description.contains(
                "set api-url, call-path, call-organization-field, call-user-field, answer-customer-number, "
                    + "answer-price-tier, answer-currency-code"
            ) == true,
            "\(missing?.description ?? "")"
        )
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("enrich-pw-\(UUID().uuidString)")
        try "from-file\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try plan(Self.b2bProfile, ["API_PASSWORD_FILE": file.path]).credentials.secret == "from-file")
        let noPassword = #expect(throws: SettingError.self) { try plan(Self.b2bProfile) }
        #expect(noPassword?.description.contains("API_PASSWORD or API_PASSWORD_FILE") == true)
        let noUser = #expect(throws: SettingError.self) {
            try plan(Self.b2bProfile.filter { $0 != "--username" && $0 != "svc" }, ["API_PASSWORD": "pw"])
        }
        #expect(noUser?.description.contains("no B2B username") == true)
        let same = #expect(throws: SettingError.self) {
            try plan(Self.b2bProfile.map { $0 == "tier" ? "cn" : $0 }, ["API_PASSWORD": "pw"])
        }
        #expect(same?.description.contains("must each be different") == true, "\(same?.description ?? "")")
        #expect(same?.setting == "answer-price-tier", "the second of the clashing pair is named")
        let badPath = #expect(throws: SettingError.self) { try plan(["--call-path", "/a b"]) }
        #expect(badPath?.description.hasPrefix("--call-path: expected a path starting with /") == true)
        // Nymble, the default, needs none of it.
        #expect(try plan().client.call == .nymble && plan().credentials.dialect == .nymble)
    }

    @Test("an unknown flag suggests the closest known one; a flag without its value says what it needs")
    func flagMistakes() {
        let unknown = #expect(throws: SettingError.self) {
            try SettingSources.parseFlags(["--concurency", "4"], allowed: Settings.run)
        }
        #expect(unknown?.description == "--concurency: unknown option; did you mean --concurrency?")
        let missing = #expect(throws: SettingError.self) {
            try SettingSources.parseFlags(["--lease"], allowed: Settings.run)
        }
        #expect(missing?.description == "--lease: needs a value (a number of seconds above 0)")
        #expect(throws: SettingError.self) {
            try SettingSources.parseFlags(["--client-secret", "x"], allowed: Settings.run)
        }
    }

    @Test("missing credentials name the variables to set, and never echo a secret")
    func missingCredentials() {
        let error = #expect(throws: SettingError.self) { try plan([], ["NYMBLE_CLIENT_SECRET": ""]) }
        #expect(error?.description == "no API secret: set NYMBLE_CLIENT_SECRET or NYMBLE_CLIENT_SECRET_FILE")
        let other = #expect(throws: SettingError.self) { try plan([], ["NYMBLE_ORG_CODE": ""]) }
        #expect(
            other?.description.contains("NYMBLE_ORG_CODE") == true && other?.description.contains("s3cret") == false
        )
    }

    @Test("errors say whether a flag, a variable or a job file was wrong, with the exit code of each")
    func exitCodes() {
        #expect(EnrichCLI.exitCode(for: SettingError(setting: "x", origin: .flag("--x"), problem: "p")) == 64)
        #expect(EnrichCLI.exitCode(for: SettingError(setting: "x", origin: .environment("X"), problem: "p")) == 4)
        #expect(
            EnrichCLI.exitCode(
                for: SettingError(setting: "x", origin: .jobFile(path: "j.json", key: "x"), problem: "p")
            ) == 3
        )
        #expect(EnrichCLI.exitCode(for: SettingError(setting: "x", origin: .missing, problem: "p")) == 4)
    }

    @Test("README's configuration table is the one the settings generate")
    func readmeTable() throws {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        #expect(
            text.contains(SettingsHelp.markdown(for: Settings.all)),
            "run `enrich settings --markdown` and paste it"
        )
    }
}

/// A job file's values sit under flags and the environment.
@Suite("enrich run --job: flag > environment > job file > default")
struct JobSettingsLayeringTests {
    let base = [
        "DATABASE_URL": "postgres://enrich@db:5432/app", "NYMBLE_ORG_CODE": "org_1", "NYMBLE_CLIENT_ID": "client_1",
        "NYMBLE_CLIENT_SECRET": "s3cret-value",
    ]

    /// A job file setting concurrency 4 and lease 90; the plan for `flags` + `environment`.
    func plan(_ flags: [String], _ environment: [String: String]) throws -> RunPlan {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Data(#"{"source": "queue", "concurrency": 4, "lease": 90, "api-url": "http://job:1"}"#.utf8)
            .write(to: directory.appendingPathComponent("nightly.json"))
        let arguments = ["--job", "nightly", "--jobs-dir", directory.path] + flags
        let parsed = try SettingSources.parseFlags(arguments, allowed: Settings.database + Settings.run)
        return try RunPlan.resolve(flags: parsed, environment: Environment(base.merging(environment) { _, new in new }))
    }

    @Test("the job's values apply where nothing else is given, and its name is the run's job name")
    func jobValues() throws {
        let resolved = try plan([], [:])
        #expect(resolved.job?.name == "nightly")
        #expect(resolved.worker.concurrency == 4 && resolved.worker.lease == .seconds(90))
        #expect(resolved.client.baseURL == "http://job:1" && resolved.worker.jobName == "nightly")
        #expect(resolved.worker.shutdownGrace == .seconds(30), "defaults for the rest")
    }

    @Test("an environment variable beats the job, a flag beats both; empty variables count as unset")
    func precedence() throws {
        #expect(try plan([], ["ENRICH_CONCURRENCY": "8"]).worker.concurrency == 8)
        #expect(try plan(["--concurrency", "16"], ["ENRICH_CONCURRENCY": "8"]).worker.concurrency == 16)
        #expect(try plan([], ["ENRICH_CONCURRENCY": ""]).worker.concurrency == 4)
        #expect(try plan([], ["ENRICH_JOB_NAME": "other"]).worker.jobName == "nightly")
    }

    @Test("a NAME_FILE variable beats the job's NAME")
    func fileVariable() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("url-\(UUID().uuidString)")
        try Data("http://from-file:2\n".utf8).write(to: file)
        #expect(try plan([], ["NYMBLE_BASE_URL_FILE": file.path]).client.baseURL == "http://from-file:2")
    }

    @Test("--job-name cannot rename a job's runs")
    func noRename() throws {
        #expect(throws: SettingError.self) { _ = try plan(["--job-name", "x"], [:]) }
    }
}
