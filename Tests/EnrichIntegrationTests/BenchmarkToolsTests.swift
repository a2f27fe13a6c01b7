import EnrichQueue
import Foundation
import NymbleAPI
import NymbleSimulator
import Testing

/// The two instruments `scripts/bench` relies on: the database-only ceiling command and the simulator's
/// recorded times. (The benchmarks themselves are not tests: they run in release mode and print figures.)
@Suite("Benchmark instruments", .freshSchema)
struct BenchmarkToolsTests {
    @Test(
        "enrich benchmark-database drains the queue with claim + complete only (written back in write batches) and reports it as JSON"
    )
    func databaseCeiling() async throws {
        let database = try TestDatabase.require()
        try await WorkerHarness.enqueue(WorkerHarness.pairs(1_234), into: database)
        let child = try EnrichProcess.start(
            ["benchmark-database", "--claim-batch", "100", "--write-batch", "30"],
            environment: try WorkerProcessTests.environment(database, baseURL: "http://127.0.0.1:9")
        )
        let status = try await child.wait()
        #expect(status == 0, "\(child.standardError)")
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(child.standardOutput.utf8)) as? [String: Any]
        )
        #expect(report["rows"] as? Int == 1_234)
        #expect((report["rows_per_second"] as? Double ?? 0) > 0)
        let counts = try await Queue(database: database).exactCounts()
        #expect(counts.done == 1_234 && counts.total == 1_234)
    }

    @Test("the simulator records login times and each UserId's first arrival only when asked to")
    func recordedTimes() async throws {
        var configuration = SimulatorConfiguration()
        configuration.recordTimes = true
        let before = Date().timeIntervalSince1970
        try await withSimulatorClient(configuration) { simulator, client in
            let grant = try await client.login(simulatorCredentials)
            for user in ["u1", "u2", "u1"] {
                _ = try await client.access(organizationId: "org1", userId: user, token: grant.token)
            }
            let stats = simulator.stats()
            #expect(stats.loginTimes?.count == 1)
            #expect(stats.loginTimes?.allSatisfy { $0 >= before && $0 <= Date().timeIntervalSince1970 } == true)
            #expect(stats.accessArrivals.map { Set($0.keys) } == ["u1", "u2"], "first arrival per UserId")
        }
        try await withSimulatorClient(SimulatorConfiguration()) { simulator, client in
            let grant = try await client.login(simulatorCredentials)
            _ = try await client.access(organizationId: "org1", userId: "u1", token: grant.token)
            #expect(simulator.stats().loginTimes == nil && simulator.stats().accessArrivals == nil)
        }
    }
}
