import EnrichQueue
import Foundation
import NIOPosix
import Testing

/// A PostgreSQL cluster of the test's own, for tests that stop, restart or freeze the server (the shared
/// test server must stay up for the other tests). Created with initdb in a temporary directory, on a free
/// loopback port, as the `postgres` user when the tests run as root (PostgreSQL refuses root), exactly as
/// `scripts/lib/postgres.sh` does for the shared one.
///
/// Every command is waited for on NIO's thread pool, never on the cooperative threads the tests share:
/// `initdb` or `pg_ctl` waited for there held one of the machine's two such threads for seconds, and with it
/// the timing of every other test in the process (a 2 s fleet pause measured as 9.5 s).
final class PrivateCluster: Sendable {
    let directory: URL
    let port: Int
    private let binaries: URL

    /// `postgres://postgres@127.0.0.1:<port>/postgres?sslmode=disable`
    var url: String { "postgres://postgres@127.0.0.1:\(port)/postgres?sslmode=disable" }

    /// Starts a fresh cluster, runs `body`, then stops and deletes it whatever happened.
    static func withCluster<T>(_ body: (PrivateCluster) async throws -> T) async throws -> T {
        let cluster = try await Self.offThePool { try PrivateCluster() }
        do {
            try await cluster.start()
            let result = try await body(cluster)
            await cluster.destroy()
            return result
        } catch {
            await cluster.destroy()
            throw error
        }
    }

    private init() throws {
        binaries = try Self.findBinaries()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("enrich-pg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        port = try Self.freePort()
        if getuid() == 0 {
            try Self.shell(["chown", "postgres:postgres", directory.path])
        }
        try runAsPostgres([
            binaries.appendingPathComponent("initdb").path, "-D", dataPath, "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        ])
    }

    /// Runs `work`, which blocks (it waits for child processes), on NIO's thread pool.
    private static func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(work)
    }

    private var dataPath: String { directory.appendingPathComponent("data").path }

    func start() async throws {
        try await pgctl([
            "start", "-w", "-t", "60", "-l", directory.appendingPathComponent("server.log").path, "-o",
            "-p \(port) -k \(directory.path) -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off "
                + "-c synchronous_commit=off -c full_page_writes=off",
        ])
    }

    /// `pg_ctl stop -m fast`: connections are closed, new ones refused.
    func stop() async throws { try await pgctl(["stop", "-w", "-m", "fast"]) }

    /// `pg_ctl restart -m fast`.
    func restart() async throws {
        try await pgctl(["restart", "-w", "-m", "fast", "-l", directory.appendingPathComponent("server.log").path])
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) every process of the cluster: the server then accepts TCP
    /// connections in the kernel but never answers, like a host that vanished. Synchronous (for a `defer`):
    /// the processes are found in `/proc`, no command is waited for.
    func freeze(_ frozen: Bool) throws {
        let pidFile = try String(contentsOf: URL(fileURLWithPath: dataPath + "/postmaster.pid"), encoding: .utf8)
        guard let postmaster = pidFile.split(separator: "\n").first.flatMap({ Int32($0) }) else { return }
        let pids = [postmaster] + Self.children(of: postmaster)
        for pid in pids { kill(pid, frozen ? SIGSTOP : SIGCONT) }
    }

    /// The processes whose parent is `parent` (field 4 of `/proc/<pid>/stat`, after the command's parentheses).
    private static func children(of parent: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> Int32? in
            guard let pid = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == parent ? pid : nil
        }
    }

    private func destroy() async {
        try? freeze(false)
        try? await pgctl(["stop", "-w", "-m", "immediate"])
        try? FileManager.default.removeItem(at: directory)
    }

    private func pgctl(_ arguments: [String]) async throws {
        let command = [binaries.appendingPathComponent("pg_ctl").path, "-D", dataPath] + arguments
        try await Self.offThePool { [self] in try runAsPostgres(command) }
    }

    private func runAsPostgres(_ command: [String]) throws {
        try Self.shell(getuid() == 0 ? ["runuser", "-u", "postgres", "--"] + command : command)
    }

    private static func findBinaries() throws -> URL {
        if let bindir = ProcessInfo.processInfo.environment["ENRICH_PG_BINDIR"], !bindir.isEmpty {
            return URL(fileURLWithPath: bindir)
        }
        let root = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        for version in versions.sorted(by: >) {
            let bin = root.appendingPathComponent(version).appendingPathComponent("bin")
            if FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("initdb").path) { return bin }
        }
        throw NoPostgres()
    }

    struct NoPostgres: Error, CustomStringConvertible {
        var description: String {
            "PostgreSQL's server binaries are not installed: run scripts/test (it installs them)"
        }
    }

    struct CommandFailed: Error, CustomStringConvertible {
        let command: [String]
        let status: Int32
        var description: String { "\(command.joined(separator: " ")) exited with \(status)" }
    }

    private static func freePort() throws -> Int {
        let output = try Self.output([
            "python3", "-c",
            "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1]); s.close()",
        ])
        guard let port = Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw NoPostgres() }
        return port
    }

    @discardableResult
    private static func output(_ command: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CommandFailed(command: command, status: process.terminationStatus)
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Runs `command` with its output discarded, no inherited descriptor beyond the standard three and an
    /// empty signal mask: a server it starts (pg_ctl daemonizes postgres) must not keep open the descriptor
    /// through which Foundation learns that its child exited, or `waitUntilExit` never returns, and must not
    /// inherit the signals libdispatch blocks on the test's threads.
    private static func shell(_ command: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments =
            [
                "python3", "-c",
                "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.closerange(3, 65536); "
                    + "os.execvp(sys.argv[1], sys.argv[1:])",
            ] + command
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CommandFailed(command: command, status: process.terminationStatus)
        }
    }
}
