import EnrichCore
import EnrichFleet
import EnrichQueue
import EnrichThrottle
import EnrichToken
import Foundation
import Glibc
import Logging
import NymbleAPI
import NymbleSimulator
import PostgresNIO
import Synchronization
import Testing

/// Several workers of one schema against one API: each "worker" here is a store or throttle of its own, as
/// a separate process would have (nothing shared but PostgreSQL), plus two `enrich run` processes.
@Suite("Fleet: one token and one send budget through PostgreSQL", .timeLimit(.minutes(3)))
struct FleetTests {
    static func key(_ baseURL: String, _ credentials: NymbleCredentials = simulatorCredentials) -> String {
        TokenSeal.credentialsKey(baseURL: baseURL, orgCode: credentials.orgCode, clientId: credentials.clientId)
    }

    /// A fleet token store for worker `name`, logging in through `client` with `credentials`.
    static func store(
        _ name: String,
        database: Database,
        baseURL: String,
        client: NymbleClient,
        credentials: NymbleCredentials = simulatorCredentials,
        configuration: TokenStoreConfiguration = .init()
    ) async throws -> SharedTokenStore<ContinuousClock> {
        let key = key(baseURL, credentials)
        let shared = FleetCredentials(database: database, key: key)
        try await shared.prepare()
        let source = FleetTokenSource(
            credentials: shared,
            seal: TokenSeal(secret: credentials.clientSecret, credentialsKey: key),
            owner: name,
            configuration: configuration,
            databaseRetryLimit: .seconds(5),
            clock: ContinuousClock(),
            logger: quietLogger
        ) { try await client.login(credentials) }
        return SharedTokenStore(source: source, clock: ContinuousClock(), logger: quietLogger)
    }

    /// `count` workers' stores, named w0, w1, ...
    static func stores(
        _ count: Int,
        database: Database,
        baseURL: String,
        client: NymbleClient,
        credentials: NymbleCredentials = simulatorCredentials,
        configuration: TokenStoreConfiguration = .init()
    ) async throws -> [SharedTokenStore<ContinuousClock>] {
        var stores: [SharedTokenStore<ContinuousClock>] = []
        for worker in 0..<count {
            stores.append(
                try await store(
                    "w\(worker)",
                    database: database,
                    baseURL: baseURL,
                    client: client,
                    credentials: credentials,
                    configuration: configuration
                )
            )
        }
        return stores
    }

    static func withFleet(
        _ simulator: SimulatorConfiguration = .init(),
        _ body: (Database, NymbleSimulator, String, NymbleClient) async throws -> Void
    ) async throws {
        try await TestDatabase.withFreshSchema(maximumConnections: 16) { database in
            try await NymbleSimulator.withRunning(simulator, logger: quietLogger) { simulatorHandle, baseURL in
                try await NymbleClient.withClient(
                    configuration: .init(baseURL: baseURL, maximumConnections: 128, requestTimeout: .seconds(20)),
                    logger: quietLogger
                ) { client in try await body(database, simulatorHandle, baseURL, client) }
            }
        }
    }

    @Test(
        "four workers calling for 10 s with 8 s tokens: one login per lifetime for the fleet, none refused, no expired token sent"
    )
    func oneLoginPerLifetime() async throws {
        var simulator = SimulatorConfiguration()
        // Renewed 4 s before expiry: a loaded machine has taken over two seconds between handing out a token
        // and the simulator checking it (a 401 with 5 s tokens renewed 2 s ahead), and once over three (6 s
        // tokens renewed 3 s ahead, in a run of 19 s for 10 s of calls).
        simulator.tokenLifetime = .seconds(8)
        try await Self.withFleet(simulator) { database, simulator, baseURL, client in
            let stores = try await Self.stores(
                4,
                database: database,
                baseURL: baseURL,
                client: client,
                configuration: TokenStoreConfiguration(refreshMargin: .seconds(4))
            )
            let deadline = ContinuousClock.now + .seconds(10)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (worker, store) in stores.enumerated() {
                    for task in 0..<6 {
                        group.addTask {
                            var index = 0
                            while ContinuousClock.now < deadline {
                                let token = try await store.currentToken()
                                _ = try await client.access(
                                    organizationId: "o\(worker)",
                                    userId: "u\(task)-\(index)",
                                    token: token.token
                                )
                                index += 1
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let stats = simulator.stats()
            #expect(stats.access401 == 0 && stats.expiredTokenUses == 0, "no call used an expired token")
            #expect(stats.loginsThrottled == 0, "no login refused with 429")
            // 10 s with a renewal every 4 s: at most 1 + floor(10 / 4) = 3 logins for the whole fleet (4 workers
            // alone would need 12); fewer when a loaded machine starts the calls late, never an expired token.
            #expect((2...5).contains(stats.logins), "one login per lifetime for the fleet: \(stats.logins)")
            var performed = 0
            for store in stores { performed += await store.loginCount() }
            #expect(performed == stats.logins, "every login counted by the worker that made it")
        }
    }

    @Test("a revoked token, 4 workers × 50 callers get 401 together: one login for the fleet, every call then succeeds")
    func revokedTokenOneLogin() async throws {
        try await Self.withFleet { database, simulator, baseURL, client in
            let stores = try await Self.stores(4, database: database, baseURL: baseURL, client: client)
            for store in stores { _ = try await store.currentToken() }
            #expect(simulator.stats().logins == 1, "the first login is shared")
            simulator.revokeAllTokens()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (worker, store) in stores.enumerated() {
                    for index in 0..<50 {
                        group.addTask {
                            let first = try await store.currentToken()
                            do {
                                _ = try await client.access(
                                    organizationId: "o\(worker)",
                                    userId: "u\(index)",
                                    token: first.token
                                )
                                return
                            } catch let error as NymbleAPIError where error.code == .unauthorized {
                                await store.tokenRejected(first)
                            }
                            let second = try await store.currentToken()
                            _ = try await client.access(
                                organizationId: "o\(worker)",
                                userId: "u\(index)",
                                token: second.token
                            )
                        }
                    }
                }
                try await group.waitForAll()
            }
            let stats = simulator.stats()
            #expect(stats.logins == 2, "one re-login for 200 rejections in 4 workers: \(stats.logins)")
            #expect(stats.access200 == 200)
        }
    }

    @Test(
        "refused credentials: one login refused, every worker stops with the same message; another secret logs in again"
    )
    func refusedCredentialsStopAll() async throws {
        try await Self.withFleet { database, simulator, baseURL, client in
            let wrong = NymbleCredentials(
                orgCode: simulatorCredentials.orgCode,
                clientId: simulatorCredentials.clientId,
                clientSecret: "not-the-secret"
            )
            let stores = try await Self.stores(
                4,
                database: database,
                baseURL: baseURL,
                client: client,
                credentials: wrong
            )
            var messages: [String] = []
            for store in stores {
                do {
                    _ = try await store.currentToken()
                    Issue.record("a refused secret gave a token")
                } catch let error as NymbleAPIError {
                    #expect(error.code == .invalidCredentials)
                    messages.append("\(error)")
                }
            }
            #expect(simulator.stats().loginsUnauthorized == 1, "the refusal is recorded once for the fleet")
            #expect(simulator.stats().logins == 0)
            #expect(messages.count == 4 && !messages.joined().contains("not-the-secret"), "\(messages)")
            // The right secret is not held back by the refusal of another.
            let fixed = try await Self.store("w9", database: database, baseURL: baseURL, client: client)
            _ = try await fixed.currentToken()
            #expect(simulator.stats().logins == 1)
        }
    }

    @Test("the token is sealed at rest: the row holds no token text, and only the same secret opens it")
    func tokenSealedAtRest() async throws {
        try await Self.withFleet { database, _, baseURL, client in
            let store = try await Self.store("w0", database: database, baseURL: baseURL, client: client)
            let token = try await store.currentToken().token.bearerValue
            let rows = try await database.query(
                "read the sealed token",
                "SELECT sealed_token FROM \(unescaped: "\"\(database.configuration.schema)\"").api_credentials"
            )
            let buffer = try #require(try rows.first?.decode(ByteBuffer?.self))
            let sealed = Array(buffer.readableBytesView)
            let text = String(decoding: sealed, as: UTF8.self)
            #expect(!text.contains(token) && !text.contains(String(token.prefix(8))))
            let key = Self.key(baseURL)
            #expect(TokenSeal(secret: simulatorCredentials.clientSecret, credentialsKey: key).open(sealed) == token)
            #expect(TokenSeal(secret: "another secret", credentialsKey: key).open(sealed) == nil)
            #expect(TokenSeal(secret: simulatorCredentials.clientSecret, credentialsKey: "other").open(sealed) == nil)
        }
    }

    @Test("the login limit is kept fleet-wide: 8 forced renewals across 4 workers, never more than 3 logins in 2 s")
    func loginLimitFleetWide() async throws {
        var simulator = SimulatorConfiguration()
        simulator.recordTimes = true
        try await Self.withFleet(simulator) { database, simulator, baseURL, client in
            let configuration = TokenStoreConfiguration(loginsPerWindow: 3, loginWindow: .seconds(2))
            let stores = try await Self.stores(
                4,
                database: database,
                baseURL: baseURL,
                client: client,
                configuration: configuration
            )
            for round in 0..<8 {
                let store = stores[round % 4]
                let token = try await store.currentToken()
                await store.tokenRejected(token)
            }
            _ = try await stores[0].currentToken()
            let times = (simulator.stats().loginTimes ?? []).sorted()
            #expect(times.count >= 8, "\(times.count) logins")
            for (index, time) in times.enumerated() where index + 3 < times.count {
                #expect(times[index + 3] - time >= 1.9, "4 logins within \(times[index + 3] - time) s")
            }
        }
    }

    @Test("three workers with a fleet rate of 60/s send at most 60/s together, sharing the budget")
    func sharedSendBudget() async throws {
        try await TestDatabase.withFreshSchema { database in
            let limiter = FleetLimiter(database: database, key: "http://api.test")
            try await limiter.prepare()
            let budget = PostgresSendBudget(limiter: limiter, owner: "test")
            let throttles = (0..<3).map { _ in
                Throttle(
                    configuration: .init(controller: .init(maximumRate: 60)),
                    clock: ContinuousClock(),
                    logger: quietLogger,
                    budget: budget
                )
            }
            let started = ContinuousClock.now
            // Five seconds, so that the first reservations (new connections, a loaded suite) weigh little.
            let seconds = 5.0
            var counts = [Int](repeating: 0, count: 3)
            try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                for (worker, throttle) in throttles.enumerated() {
                    for _ in 0..<8 {
                        group.addTask {
                            var sent = 0
                            while true {
                                let at = try await throttle.acquire()
                                guard started.duration(to: at) < .seconds(seconds) else { return (worker, sent) }
                                sent += 1
                            }
                        }
                    }
                }
                for try await (worker, sent) in group { counts[worker] += sent }
            }
            let total = counts.reduce(0, +)
            // At most the rate over the window plus the one-slot tolerance of the first reservation.
            #expect(total <= Int(60 * seconds) + 2, "sent \(total) in \(seconds) s at a fleet rate of 60/s")
            // Alone: 295–301. Under the full suite a reservation may take most of its 1 s statement limit; with
            // blocks of a tenth of a second a worker then sent a tenth of its share (69, 18, 60 and 96 on loaded
            // runs). Blocks now cover two round trips: 186 and 223 on loaded runs.
            #expect(total >= 75, "the budget is used, not lost: \(total)")
            #expect(counts.allSatisfy { $0 > 0 }, "every worker gets a share: \(counts)")
        }
    }

    @Test("a pause is announced to the fleet at once (LISTEN/NOTIFY), with its congestion event")
    func pauseAnnounced() async throws {
        try await TestDatabase.withFreshSchema { database in
            let limiter = FleetLimiter(database: database, key: "http://api.test")
            try await limiter.prepare()
            let announced = AsyncStream.makeStream(of: SharedPause.self)
            // Long enough that every announcement below falls within it however slowly LISTEN comes up on a
            // loaded machine (a pause that ended would make the next one a new event).
            let first = try await limiter.pause(for: .seconds(10))
            #expect(first == 1, "a first pause is a new congestion event")
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await PostgresSendBudget(limiter: limiter, owner: "test").listenForPauses {
                        announced.continuation.yield($0)
                    }
                }
                group.addTask {
                    // LISTEN takes a moment to be in place: announce until it is heard, then give up.
                    for _ in 0..<30 {
                        try await limiter.pause(for: .seconds(2))
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    announced.continuation.finish()
                }
                var iterator = announced.stream.makeAsyncIterator()
                let heard = await iterator.next()
                group.cancelAll()
                let pause = try #require(heard, "no pause was heard in 3 s")
                #expect(pause.events == 1, "pauses within one event keep its number")
                #expect(pause.pausedFor > .seconds(1) && pause.pausedFor <= .seconds(10), "\(pause.pausedFor)")
            }
        }
    }

    @Test("a 429 in one worker pauses the others (no known rate): they learn of it within a quarter second")
    func sharedPause() async throws {
        try await TestDatabase.withFreshSchema { database in
            let limiter = FleetLimiter(database: database, key: "http://api.test")
            try await limiter.prepare()
            let budget = PostgresSendBudget(limiter: limiter, owner: "test")
            let first = Throttle(clock: ContinuousClock(), logger: quietLogger, budget: budget)
            let second = Throttle(clock: ContinuousClock(), logger: quietLogger, budget: budget)
            _ = try await second.acquire()
            let sentAt = try await first.acquire()
            await first.throttled(sentAt: sentAt, retryAfter: .seconds(2))
            try await Task.sleep(for: .milliseconds(300))
            let before = ContinuousClock.now
            _ = try await second.acquire()
            let waited = before.duration(to: .now)
            #expect(waited >= .milliseconds(1200), "the other worker paused too (waited \(waited))")
            // Alone about 2 s. Full-suite runs saw 5.2, 9.5 and 5.7 s while other tests' private PostgreSQL
            // clusters were created and restarted by commands waited for on the cooperative threads; with those
            // waited for on NIO's thread pool, 1.9 and 1.7 s. Stuck is never.
            #expect(waited < .seconds(20), "held for the pause, not stuck (waited \(waited))")
        }
    }

    @Test(
        "three adaptive workers over PostgreSQL: one leads, a 429 cuts the fleet's rate once and all follow it, the lead passes on within 3–4 s"
    )
    func oneLeaderOverPostgres() async throws {
        try await TestDatabase.withFreshSchema { database in
            let limiter = FleetLimiter(database: database, key: "http://api.test")
            try await limiter.prepare()
            let throttles = (0..<3).map { index in
                Throttle(
                    clock: ContinuousClock(),
                    logger: quietLogger,
                    budget: PostgresSendBudget(limiter: limiter, owner: "worker \(index)")
                )
            }
            func leaders() async -> [Bool] {
                var leading: [Bool] = []
                for throttle in throttles { leading.append(await throttle.isLeadingFleet()) }
                return leading
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                let first = Task { await throttles[0].leadFleet() }
                defer { first.cancel() }
                try await Task.sleep(for: .milliseconds(300))
                for throttle in throttles.dropFirst() { group.addTask { await throttle.leadFleet() } }
                // For 1.5 s the leader sends at up to ~7/s, the two others at up to 50/s each (all slower on a
                // loaded machine): a cut from the leader's own counts would be far below the fleet's.
                let accepted = AcceptLog()
                try await withThrowingTaskGroup(of: Void.self) { traffic in
                    for (worker, throttle) in throttles.enumerated() {
                        traffic.addTask {
                            let (calls, gap) = worker == 0 ? (10, 150) : (75, 20)
                            for _ in 0..<calls {
                                _ = try await throttle.acquire()
                                throttle.accepted()
                                accepted.add(worker)
                                try await Task.sleep(for: .milliseconds(gap))
                            }
                        }
                    }
                    try await traffic.waitForAll()
                }
                #expect(await leaders() == [true, false, false], "the first worker leads, alone")
                let sentAt = ContinuousClock.now
                // What the fleet and the leader alone had accepted over the last second, and the fleet's busiest
                // second of the traffic.
                let entries = accepted.entries
                let recent = entries.filter { $0.at.duration(to: sentAt) <= .seconds(1) }
                let (fleetRate, leaderRate) = (Double(recent.count), Double(recent.filter { $0.worker == 0 }.count))
                let peakRate = Double(
                    entries.map { start in
                        entries.filter { $0.at >= start.at && start.at.duration(to: $0.at) < .seconds(1) }.count
                    }.max() ?? 0
                )
                for throttle in throttles { await throttle.throttled(sentAt: sentAt, retryAfter: .seconds(1)) }
                // The leader's turn for the 429 waits for a turn already in flight (its periodic one), so on a
                // loaded machine the rate can land just after `throttled` returns (CI on 8753a03 read it unset).
                var budget = try #require(try await FleetStatus.read(database).budgets.first)
                let settled = ContinuousClock.now.advanced(by: .seconds(3))
                while budget.sharedRate == nil, ContinuousClock.now < settled {
                    try await Task.sleep(for: .milliseconds(20))
                    budget = try #require(try await FleetStatus.read(database).budgets.first)
                }
                #expect(budget.pauses == 1, "three workers' 429s are one congestion event")
                let rate = try #require(budget.sharedRate, "the leader set the fleet's rate at the 429")
                // Cut to 0.9 × what the fleet accepted: above what the leader's own calls could explain, never
                // above the fleet's. The leader sees the others' calls when they report them (every quarter second,
                // later on a loaded machine) and spreads each report over the time since its previous turn, so its
                // last second can hold calls from before the test's: a loaded CI run saw 18 calls in the last
                // second and a cut to 21/s. The bound is the fleet's busiest second.
                #expect(
                    rate > 1.5 * leaderRate && rate < 1.1 * peakRate,
                    "cut from the fleet's \(fleetRate)/s in the last second, \(peakRate)/s at most (the leader's own \(leaderRate)/s): \(rate)"
                )
                #expect(budget.leader == "worker 0" && budget.rateChanges >= 1, "cut by the leader")
                try await Task.sleep(for: .milliseconds(1100))  // the pause
                for throttle in throttles.dropFirst() {
                    _ = try await throttle.acquire()
                    let followed = try #require(await throttle.currentRate())
                    #expect(abs(followed - rate) < rate * 0.2, "a follower sends at the fleet's rate: \(followed)")
                }
                first.cancel()
                await first.value
                let lost = ContinuousClock.now
                var taken: Duration?
                while lost.duration(to: .now) < .seconds(5) {
                    if await leaders().dropFirst().contains(true) {
                        taken = lost.duration(to: .now)
                        break
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                let takeover = try #require(taken, "no worker took the lead within 5 s")
                // The lease (2 s) runs out, then a follower tries within its next second: 3 s, plus the
                // statements' time on a loaded machine (3.03 s seen on CI).
                #expect(takeover <= .seconds(4), "the lead passed on in \(takeover)")
                let after = try #require(try await FleetStatus.read(database).budgets.first)
                #expect(after.leader?.hasPrefix("worker ") == true && after.leader != "worker 0")
                #expect(after.sharedRate.map { abs($0 - rate) < rate * 0.3 } == true, "the rate goes on: \(after)")
                group.cancelAll()
            }
        }
    }

    @Test(
        "two `enrich run` processes with --rate 150 each and 6 s tokens: no 429, the fleet's logins, one SIGKILLed and its rows taken over, every row done once"
    )
    func twoProcesses() async throws {
        var configuration = SimulatorConfiguration()
        configuration.accessRate = 150
        // 6 s: a 4 s token is renewed 0.4 s ahead, and on a loaded CI run a call was once sent later than that.
        configuration.tokenLifetime = .seconds(6)
        try await TestDatabase.withFreshSchema { database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(1_500), into: database)
            try await NymbleSimulator.withRunning(configuration, logger: quietLogger) { simulator, baseURL in
                let environment = FailurePathTests.environment(
                    url: try TestDatabase.url(),
                    schema: database.configuration.schema,
                    baseURL: baseURL
                )
                let arguments = [
                    "run", "--rate", "150", "--concurrency", "16", "--heartbeat", "1", "--progress", "off",
                ]
                let started = ContinuousClock.now
                let survivor = try EnrichProcess.start(arguments, environment: environment)
                let victim = try EnrichProcess.start(arguments, environment: environment)
                try await Task.sleep(for: .seconds(3))
                let during = try await Self.status(environment)
                #expect(during.workers.count == 2, "both workers live: \(during.workers)")
                #expect(during.tokens.count == 1 && during.budgets.count == 1)
                #expect(during.budgets.first.map { $0.reservations > 0 } == true)
                victim.signal(SIGKILL)
                _ = try await victim.wait(timeout: .seconds(10))
                #expect(try await survivor.wait(timeout: .seconds(90)) == 0, "\(survivor.standardError.suffix(2_000))")
                let seconds = started.duration(to: .now).inSeconds
                let stats = simulator.stats()
                #expect(stats.access429 == 0, "the two kept to 150/s together: \(stats.access429) × 429")
                #expect(stats.loginsThrottled == 0 && stats.expiredTokenUses == 0 && stats.access401 == 0, "\(stats)")
                // One login per lifetime for the two (renewed 0.6 s before the 6 s expiry), and one more.
                #expect(stats.logins <= Int(seconds / 5.4) + 2, "\(stats.logins) logins in \(seconds) s")
                // 1,500 calls at 150/s take 10 s; the killed worker's rows are taken over at once, not after
                // its lease (120 s).
                #expect(seconds < 30, "took \(seconds) s")
                WorkerHarness.expectAllSettled(try await WorkerHarness.rows(database), expectedCount: 1_500)
                #expect(try await WorkerHarness.rows(database).allSatisfy { $0.state == "done" })
                #expect(stats.access200 >= 1_500)
                let after = try await Self.status(environment)
                #expect(after.workers.isEmpty)
                #expect(after.tokens.first?.loginsLastHour == stats.logins + stats.loginsThrottled)
            }
        }
    }

    @Test("--solo: a process on its own token and throttle; the fleet's rows are not created")
    func soloOptOut() async throws {
        try await TestDatabase.withFreshSchema { database in
            try await WorkerHarness.enqueue(WorkerHarness.pairs(50), into: database)
            try await NymbleSimulator.withRunning(logger: quietLogger) { simulator, baseURL in
                let schema = database.configuration.schema
                let environment = FailurePathTests.environment(
                    url: try TestDatabase.url(),
                    schema: schema,
                    baseURL: baseURL
                )
                let child = try EnrichProcess.start(["run", "--solo", "--progress", "off"], environment: environment)
                #expect(try await child.wait(timeout: .seconds(60)) == 0, "\(child.standardError.suffix(2_000))")
                #expect(simulator.stats().logins == 1)
                let rows = try await database.query(
                    "count the fleet's rows",
                    """
                    SELECT (SELECT count(*) FROM \(unescaped: "\"\(schema)\"").api_credentials)
                        + (SELECT count(*) FROM \(unescaped: "\"\(schema)\"").api_limiter)
                    """
                )
                #expect(try rows.first?.decode(Int64.self) == 0, "a solo run shares nothing")
                WorkerHarness.expectAllSettled(try await WorkerHarness.rows(database), expectedCount: 50)
            }
        }
    }

    /// `enrich status --json`'s fleet section; the output never holds a token.
    static func status(_ environment: [String: String]) async throws -> FleetStatus {
        let status = try EnrichProcess.start(["status", "--json"], environment: environment)
        #expect(try await status.wait(timeout: .seconds(30)) == 0, "\(status.standardError)")
        let output = status.standardOutput
        #expect(!output.contains(simulatorCredentials.clientSecret))
        struct Report: Decodable { var fleet: FleetStatus? }
        let report = try JSONDecoder().decode(Report.self, from: Data(output.utf8))
        return try #require(report.fleet)
    }
}

/// Which worker had a call accepted when, across the test's tasks.
private final class AcceptLog: Sendable {
    private let log = Mutex<[(worker: Int, at: ContinuousClock.Instant)]>([])
    func add(_ worker: Int) { log.withLock { $0.append((worker, .now)) } }
    var entries: [(worker: Int, at: ContinuousClock.Instant)] { log.withLock { $0 } }
}
