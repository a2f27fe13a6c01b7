import EnrichCore
import EnrichThrottle
import EnrichToken
import Foundation
import Logging
import NymbleAPI
import NymbleSimulator
import Synchronization
import Testing

/// The credentials the simulator accepts by default.
let simulatorCredentials = NymbleCredentials(
    orgCode: "org_12345",
    clientId: "sdaf43tfsdg45dg",
    clientSecret: "QsFdas%4F1asr23tgb675%3"
)

let quietLogger = Logger(label: "quiet", factory: { _ in SwiftLogNoOpLogHandler() })

/// Runs `body` with a simulator and a client pointed at it.
func withSimulatorClient<T: Sendable>(
    _ configuration: SimulatorConfiguration = .init(),
    logger: Logger = quietLogger,
    maximumConnections: Int = 64,
    _ body: (NymbleSimulator, NymbleClient) async throws -> T
) async throws -> T {
    try await NymbleSimulator.withRunning(configuration, logger: quietLogger) { simulator, baseURL in
        try await NymbleClient.withClient(
            configuration: .init(
                baseURL: baseURL,
                maximumConnections: maximumConnections,
                connectTimeout: .seconds(10),
                requestTimeout: .seconds(20)
            ),
            logger: logger
        ) { client in try await body(simulator, client) }
    }
}

func makeStore(
    _ client: NymbleClient,
    configuration: TokenStoreConfiguration = .init(),
    logger: Logger = quietLogger,
    credentials: NymbleCredentials = simulatorCredentials
) -> SharedTokenStore<ContinuousClock> {
    SharedTokenStore(configuration: configuration, clock: ContinuousClock(), logger: logger) {
        try await client.login(credentials)
    }
}

@Suite("API client against the simulator over loopback", .timeLimit(.minutes(2)))
struct SimulatorClientTests {
    @Test("login and access follow the contract, nulls included, and match the simulator's directory")
    func contractRoundTrip() async throws {
        try await withSimulatorClient { simulator, client in
            let grant = try await client.login(simulatorCredentials)
            #expect(grant.tokenType == "api-key" && grant.expiresIn == .seconds(86_400))
            var allNull = 0
            var tierNull = 0
            for index in 0..<400 {
                let organization = "6d24ab9faf9e034e881fcd97"
                let user = "kp_\(index)"
                let answer = try await client.access(organizationId: organization, userId: user, token: grant.token)
                let expected = CommerceDirectory.context(organizationId: organization, userId: user)
                #expect(
                    answer
                        == CommerceContext(
                            customerNumber: expected.customerNumber,
                            priceTier: expected.priceTier,
                            currencyCode: expected.currencyCode
                        )
                )
                if answer.customerNumber == nil && answer.priceTier == nil && answer.currencyCode == nil {
                    allNull += 1
                }
                if answer.customerNumber != nil && answer.priceTier == nil { tierNull += 1 }
            }
            #expect((20...60).contains(allNull), "about 10% of users have no customer: \(allNull)/400")
            #expect((20...60).contains(tierNull), "about 10% have no price tier: \(tierNull)/400")
            #expect(simulator.stats().access200 == 400)
        }
    }

    @Test("malformed ids get a typed 400, a bad token a typed 401")
    func badRequestAndUnauthorized() async throws {
        try await withSimulatorClient { _, client in
            let grant = try await client.login(simulatorCredentials)
            for (organization, user) in [
                ("org 1", "u1"), ("o1", ""), ("o1", "bad/user"), ("o1", String(repeating: "x", count: 129)),
            ] {
                let error = await #expect(throws: NymbleAPIError.self) {
                    try await client.access(organizationId: organization, userId: user, token: grant.token)
                }
                #expect(error?.code == .badRequest && error?.status == 400)
            }
            let error = await #expect(throws: NymbleAPIError.self) {
                try await client.access(organizationId: "o1", userId: "u1", token: AccessToken("forged"))
            }
            #expect(error?.code == .unauthorized)
        }
    }

    @Test("wrong credentials give a clear, typed error at once, without the secret")
    func wrongCredentials() async throws {
        try await withSimulatorClient { simulator, client in
            let wrong = NymbleCredentials(
                orgCode: "org_12345",
                clientId: "sdaf43tfsdg45dg",
                clientSecret: "NotTheSecret!"
            )
            let store = makeStore(client, credentials: wrong)
            let started = ContinuousClock.now
            let error = await #expect(throws: NymbleAPIError.self) { try await store.currentToken() }
            #expect(error?.code == .invalidCredentials)
            #expect(ContinuousClock.now - started < .seconds(2))
            #expect(error.map { "\($0)".contains("NotTheSecret!") } == false)
            #expect(error.map { "\($0)".contains("org_12345") } == true, "says which OrgCode was refused")
            _ = await #expect(throws: NymbleAPIError.self) { try await store.currentToken() }
            #expect(simulator.stats().loginsUnauthorized == 1, "the fatal error is sticky: no second login")
        }
    }

    @Test(
        "429s carry the parsed Retry-After in each form",
        arguments: [SimulatorConfiguration.RetryAfterStyle.seconds, .httpDate, .absent]
    )
    func rateLimitedCarriesRetryAfter(style: SimulatorConfiguration.RetryAfterStyle) async throws {
        var configuration = SimulatorConfiguration()
        configuration.accessRate = 0.2  // one call per 5 s: the second call is always over the limit
        configuration.accessBurst = 1
        configuration.retryAfterStyle = style
        try await withSimulatorClient(configuration) { _, client in
            let grant = try await client.login(simulatorCredentials)
            _ = try await client.access(organizationId: "o1", userId: "u1", token: grant.token)
            let error = await #expect(throws: NymbleAPIError.self) {
                try await client.access(organizationId: "o1", userId: "u2", token: grant.token)
            }
            #expect(error?.code == .rateLimited)
            if style == .absent {
                #expect(error?.retryAfter == nil)
            } else {
                let wait = try #require(error?.retryAfter)
                #expect(wait > .zero && wait <= .seconds(6))
            }
        }
    }

    @Test("injected 5xx and dropped connections surface as transient errors")
    func faultsAreTransient() async throws {
        var configuration = SimulatorConfiguration()
        configuration.serverErrorRate = 0.3
        configuration.dropRate = 0.2
        try await withSimulatorClient(configuration) { simulator, client in
            let grant = try await client.login(simulatorCredentials)
            var codes: [NymbleAPIError.Code: Int] = [:]
            var successes = 0
            for index in 0..<200 {
                do {
                    _ = try await client.access(organizationId: "o1", userId: "u\(index)", token: grant.token)
                    successes += 1
                } catch let error as NymbleAPIError {
                    #expect(error.isTransient, "\(error)")
                    codes[error.code, default: 0] += 1
                }
            }
            let stats = simulator.stats()
            #expect(codes[.serverError] == stats.access5xx)
            #expect(codes[.transport] == stats.accessDropped)
            #expect(stats.access5xx > 10 && stats.accessDropped > 5 && successes > 50)
        }
    }
}

@Suite("One shared token across many concurrent tasks (simulator)", .timeLimit(.minutes(2)))
struct SharedTokenIntegrationTests {
    @Test("256 concurrent callers with no token yet cause exactly 1 login")
    func oneLoginForManyCallers() async throws {
        try await withSimulatorClient(maximumConnections: 256) { simulator, client in
            let store = makeStore(client)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<256 {
                    group.addTask {
                        let token = try await store.currentToken()
                        _ = try await client.access(organizationId: "o1", userId: "u\(index)", token: token.token)
                    }
                }
                try await group.waitForAll()
            }
            #expect(simulator.stats().logins == 1)
            #expect(simulator.stats().access200 == 256)
        }
    }

    @Test("a token expiring every 3 s during a stream of calls: one login per lifetime, never an expired token sent")
    func refreshAheadUnderLoad() async throws {
        var configuration = SimulatorConfiguration()
        configuration.tokenLifetime = .seconds(3)
        try await withSimulatorClient(configuration) { simulator, client in
            // A 1 s margin leaves room for a call that is slow to reach the server on a loaded test machine.
            let store = makeStore(client, configuration: TokenStoreConfiguration(refreshMargin: .seconds(1)))
            let deadline = ContinuousClock.now + .seconds(8)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<16 {
                    group.addTask {
                        var index = 0
                        while ContinuousClock.now < deadline {
                            let token = try await store.currentToken()
                            _ = try await client.access(
                                organizationId: "o\(worker)",
                                userId: "u\(index)",
                                token: token.token
                            )
                            index += 1
                        }
                    }
                }
                try await group.waitForAll()
            }
            let stats = simulator.stats()
            #expect(stats.access401 == 0 && stats.expiredTokenUses == 0, "no call used an expired token")
            // 8 s with a renewal every 2 s: 1 + floor(8 / 2) = 5 logins.
            #expect((4...6).contains(stats.logins), "one login per lifetime: \(stats.logins)")
            #expect(stats.access200 > 100)
        }
    }

    @Test("revoked token, 200 callers get 401 together: exactly 1 re-login and every call then succeeds")
    func revokedTokenOneRelogin() async throws {
        try await withSimulatorClient(maximumConnections: 200) { simulator, client in
            let store = makeStore(client)
            _ = try await store.currentToken()
            simulator.revokeAllTokens()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        for _ in 0..<3 {
                            let token = try await store.currentToken()
                            do {
                                _ = try await client.access(
                                    organizationId: "o1",
                                    userId: "u\(index)",
                                    token: token.token
                                )
                                return
                            } catch let error as NymbleAPIError where error.code == .unauthorized {
                                await store.tokenRejected(token)
                            }
                        }
                        Issue.record("call \(index) never succeeded")
                    }
                }
                try await group.waitForAll()
            }
            let stats = simulator.stats()
            #expect(stats.logins == 2, "the first login and exactly one re-login")
            #expect(stats.access200 == 200)
            #expect(stats.access401 <= 200)
        }
    }

    @Test("forced re-logins are paced by the client's window and the server never answers 429")
    func forcedReloginsArePaced() async throws {
        try await withSimulatorClient { simulator, client in
            let loginTimes = Mutex<[ContinuousClock.Instant]>([])
            let store = SharedTokenStore(
                configuration: TokenStoreConfiguration(loginsPerWindow: 3, loginWindow: .seconds(1)),
                clock: ContinuousClock(),
                logger: quietLogger
            ) {
                loginTimes.withLock { $0.append(.now) }
                return try await client.login(simulatorCredentials)
            }
            for _ in 0..<7 {
                let token = try await store.currentToken()
                simulator.revokeAllTokens()
                await store.tokenRejected(token)
            }
            let times = loginTimes.withLock { $0 }
            #expect(times.count == 7)
            for index in 3..<times.count {
                #expect(times[index] - times[index - 3] >= .milliseconds(990), "at most 3 logins in any 1 s window")
            }
            #expect(simulator.stats().loginsThrottled == 0)
        }
    }

    @Test("captured logs and error descriptions contain neither the secret nor a token")
    func noSecretsInLogs() async throws {
        let capture = LogCapture()
        let logger = capture.logger()
        var configuration = SimulatorConfiguration()
        configuration.serverErrorRate = 0.2
        try await withSimulatorClient(configuration, logger: logger) { simulator, client in
            let store = makeStore(client, logger: logger)
            var tokens: [String] = []
            var errors: [String] = []
            for round in 0..<3 {
                let token = try await store.currentToken()
                tokens.append(token.token.bearerValue)
                for index in 0..<20 {
                    do {
                        _ = try await client.access(
                            organizationId: "o",
                            userId: "u\(round)-\(index)",
                            token: token.token
                        )
                    } catch {
                        errors.append("\(error)")
                    }
                }
                simulator.revokeAllTokens()
                do {
                    _ = try await client.access(organizationId: "o", userId: "x", token: token.token)
                } catch {
                    errors.append("\(error)")
                    await store.tokenRejected(token)
                }
            }
            let wrongStore = makeStore(
                client,
                logger: logger,
                credentials: NymbleCredentials(
                    orgCode: "org_12345",
                    clientId: "sdaf43tfsdg45dg",
                    clientSecret: "Wr0ngS3cret"
                )
            )
            do { _ = try await wrongStore.currentToken() } catch { errors.append("\(error)") }

            let everything = capture.all + errors
            #expect(!capture.all.isEmpty && errors.count >= 4)
            for text in everything {
                #expect(!text.contains(simulatorCredentials.clientSecret) && !text.contains("Wr0ngS3cret"))
                for token in tokens { #expect(!text.contains(token)) }
            }
        }
    }
}
