import ArgumentParser
import EnrichCLI
import EnrichJobs
import Foundation
import Testing
import Yams

/// No Docker engine runs here: docker-compose.yml, the Dockerfile and the crontabs are checked by parsing
/// them, and every `enrich` command they contain is parsed by the real CLI (so a renamed flag fails here).
@Suite("Deployment files: docker-compose.yml, Dockerfile, crontabs")
struct DeploymentFilesTests {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func text(_ path: String) throws -> String {
        try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
    }

    static func compose() throws -> [String: Any] {
        try #require(try Yams.load(yaml: try text("docker-compose.yml")) as? [String: Any])
    }

    static func service(_ name: String) throws -> [String: Any] {
        let services = try #require(try compose()["services"] as? [String: Any])
        return try #require(services[name] as? [String: Any], "service \(name) is missing")
    }

    /// Parses `arguments` as an `enrich` command line, as the binary would (subcommand, flags, values).
    static func expectValidCommand(_ arguments: [String], _ origin: String) {
        do {
            _ = try EnrichCommand.parseAsRoot(arguments)
        } catch {
            Issue.record(
                "\(origin): `enrich \(arguments.joined(separator: " "))` is not a valid command: \(EnrichCommand.message(for: error))"
            )
        }
    }

    /// The `enrich ...` command lines of a crontab's entries (after the five schedule fields).
    static func crontabCommands(_ path: String) throws -> [[String]] {
        try text(path).split(separator: "\n").compactMap { line -> [String]? in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty, !trimmed.hasPrefix("#") else { return nil }
            let fields = trimmed.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 5, fields[0].first.map({ $0.isNumber || $0 == "*" }) == true else { return nil }
            let command = fields.dropFirst(5).joined(separator: " ")
            guard let start = command.range(of: "enrich ") else { return [] }
            var words: [String] = []
            for word in command[start.upperBound...].split(separator: " ") {
                if ["2>&1", "|", "||", "&&", ";", ">", ">>"].contains(word) || word.hasPrefix(")") { break }
                words.append(String(word.hasSuffix(")") ? word.dropLast() : word))
                if word.hasSuffix(")") { break }
            }
            return words
        }
    }

    @Test("compose: postgres (official image, healthcheck, volume), simulator, one-shot migrate, worker --follow, cron")
    func composeServices() throws {
        let compose = try Self.compose()
        let services = try #require(compose["services"] as? [String: Any])
        #expect(Set(services.keys) == ["postgres", "simulator", "migrate", "worker", "cron"])

        let postgres = try Self.service("postgres")
        #expect((postgres["image"] as? String)?.hasPrefix("postgres:") == true)
        let healthcheck = try #require(postgres["healthcheck"] as? [String: Any])
        #expect((healthcheck["test"] as? [String])?.joined(separator: " ").contains("pg_isready -h 127.0.0.1") == true)
        let volumes = try #require(postgres["volumes"] as? [String])
        #expect(volumes.contains { $0.hasPrefix("pgdata:/var/lib/postgresql/data") })
        #expect((compose["volumes"] as? [String: Any])?.keys.contains("pgdata") == true)

        for name in ["simulator", "migrate", "worker", "cron"] {
            #expect(try Self.service(name)["image"] as? String == "enrich:latest", "\(name) runs the enrich image")
        }
        #expect(try Self.service("simulator")["build"] as? String == ".", "one service builds the image")

        let migrate = try Self.service("migrate")
        #expect(migrate["restart"] as? String == "no", "migrate is a one-shot")
        let migrateDepends = try #require(migrate["depends_on"] as? [String: [String: String]])
        #expect(migrateDepends["postgres"]?["condition"] == "service_healthy")
        for name in ["worker", "cron"] {
            let depends = try #require(try Self.service(name)["depends_on"] as? [String: [String: String]])
            #expect(depends["migrate"]?["condition"] == "service_completed_successfully", "\(name) waits for migrate")
        }
        let worker = try Self.service("worker")
        let workerCommand = try #require(worker["command"] as? [String])
        #expect(Array(workerCommand.prefix(2)) == ["run", "--follow"])
        #expect(workerCommand.contains("--metrics-port"))
    }

    @Test("compose: every enrich command and flag exists in the CLI, and the cron service runs the nightly job")
    func composeCommands() throws {
        for name in ["simulator", "migrate", "worker"] {
            let command = try #require(try Self.service(name)["command"] as? [String], "\(name) has a command")
            Self.expectValidCommand(command, "docker-compose.yml service \(name)")
        }
        let cron = try Self.service("cron")
        let entrypoint = try #require(cron["entrypoint"] as? [String])
        #expect(Array(entrypoint.prefix(4)) == ["tini", "-g", "--", "supercronic"], "signals reach the job")
        let crontab = try #require(entrypoint.last)
        #expect(crontab == "/opt/enrich/jobs/crontab.container", "the Dockerfile copies jobs/ to /opt/enrich/jobs")
        let entries = try Self.crontabCommands("jobs/crontab.container")
        #expect(entries.count == 1)
        for entry in entries {
            Self.expectValidCommand(entry, "jobs/crontab.container")
            #expect(entry.starts(with: ["run", "--job", "nightly-sync", "--trigger", "cron"]))
        }
    }

    @Test("compose: secrets come from files, never inline; every secret file has an example")
    func composeSecrets() throws {
        let compose = try Self.compose()
        let services = try #require(compose["services"] as? [String: [String: Any]])
        let secretNames = ["NYMBLE_CLIENT_SECRET", "DATABASE_URL", "POSTGRES_PASSWORD"]
        for (name, service) in services {
            let environment = service["environment"] as? [String: Any] ?? [:]
            for key in environment.keys {
                #expect(!secretNames.contains(key), "\(name) sets \(key) inline: use \(key)_FILE and a compose secret")
            }
            let declared = try #require(compose["secrets"] as? [String: [String: String]])
            for secret in service["secrets"] as? [String] ?? [] {
                let file = try #require(declared[secret]?["file"], "secret \(secret) is declared with a file")
                let example = file.replacingOccurrences(of: "compose/secrets/", with: "compose/secrets.example/")
                #expect(
                    FileManager.default.fileExists(atPath: Self.root.appendingPathComponent(example).path),
                    "\(example) exists"
                )
            }
        }
        let envFile = try Self.text("compose/nymble.env")
        #expect(!envFile.contains("SECRET="), "the env file holds no secret")
    }

    @Test("Dockerfile: multi-stage build on the official Swift image, slim runtime, non-root user")
    func dockerfile() throws {
        let lines = try Self.text("Dockerfile").split(separator: "\n").map(String.init)
        let stages = lines.filter { $0.hasPrefix("FROM ") }
        #expect(stages.count == 2)
        #expect(stages.first?.hasPrefix("FROM swift:") == true && stages.first?.hasSuffix(" AS build") == true)
        #expect(stages.last?.contains("swift:") == false, "the runtime image carries no toolchain")
        #expect(lines.contains { $0.hasPrefix("COPY --from=build ") })
        let user = try #require(lines.last { $0.hasPrefix("USER ") })
        #expect(!user.contains("root") && user != "USER 0")
        #expect(lines.contains { $0.contains("sha1sum -c") }, "the scheduler binary is checksum-verified")
        #expect(lines.contains("COPY jobs /opt/enrich/jobs"))
        for directory in ["Sources", "Tests"] {
            #expect(lines.contains("COPY \(directory) ./\(directory)"), "SwiftPM needs every declared target's sources")
        }
        #expect(lines.contains { $0.contains("apt-get install") && $0.contains("tini") })
    }

    @Test("jobs/: every job definition parses, and the host crontab's commands are valid")
    func jobsAndCrontab() throws {
        let directory = Self.root.appendingPathComponent("jobs").path
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }
        #expect(files.contains("nightly-sync.json"))
        for file in files {
            _ = try JobDefinition.load((directory as NSString).appendingPathComponent(file), directory: directory)
        }
        let entries = try Self.crontabCommands("jobs/crontab")
        #expect(entries.count == 2)
        for entry in entries { Self.expectValidCommand(entry, "jobs/crontab") }
        #expect(entries.contains { $0.starts(with: ["run", "--job", "nightly-sync", "--trigger", "cron"]) })
        #expect(entries.contains { $0.starts(with: ["status", "--check", "--job", "nightly-sync", "--max-age"]) })
        let crontab = try Self.text("jobs/crontab")
        #expect(
            !crontab.contains("NYMBLE_CLIENT_SECRET=") && !crontab.contains("DATABASE_URL="),
            "secrets by _FILE only"
        )
    }
}
