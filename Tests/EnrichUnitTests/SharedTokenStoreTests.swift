import EnrichToken
import Logging
import NymbleAPI
import Synchronization
import Testing

/// Stands in for `POST /api/auth/login` in pure-logic tests: counts calls, can be held open, and answers
/// from a script. (The HTTP path is covered by the integration tests against the simulator.)
final class ScriptedLogin: Sendable {
    enum Step: Sendable {
        case grant(Duration)
        case fail(NymbleAPIError)
    }
    private let state = Mutex<(calls: Int, script: [Step], gate: CheckedContinuation<Void, Never>?, holdNext: Bool)>(
        (0, [], nil, false)
    )
    let clock: ManualClock
    private let times = Mutex<[ManualClock.Instant]>([])

    init(clock: ManualClock, script: [Step] = []) {
        self.clock = clock
        state.withLock { $0.script = script }
    }

    var calls: Int { state.withLock { $0.calls } }
    var callTimes: [ManualClock.Instant] { times.withLock { $0 } }

    /// The next login waits until ``release()``.
    func holdNext() { state.withLock { $0.holdNext = true } }

    func release() {
        let gate = state.withLock { state in
            defer { state.gate = nil }
            return state.gate
        }
        gate?.resume()
    }

    var isHeld: Bool { state.withLock { $0.gate != nil } }

    func callAsFunction() async throws -> LoginGrant {
        let now = clock.now
        times.withLock { $0.append(now) }
        let (step, hold, number) = state.withLock { state -> (Step, Bool, Int) in
            state.calls += 1
            let step = state.script.isEmpty ? .grant(.seconds(3600)) : state.script.removeFirst()
            defer { state.holdNext = false }
            return (step, state.holdNext, state.calls)
        }
        if hold {
            await withCheckedContinuation { continuation in state.withLock { $0.gate = continuation } }
        }
        switch step {
        case .grant(let lifetime):
            return LoginGrant(token: AccessToken("token-\(number)"), tokenType: "api-key", expiresIn: lifetime)
        case .fail(let error):
            throw error
        }
    }
}

@Suite("Shared token store (manual clock)", .timeLimit(.minutes(1)))
struct SharedTokenStoreTests {
    static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func makeStore(
        _ login: ScriptedLogin,
        _ configuration: TokenStoreConfiguration = .init()
    )
        -> SharedTokenStore<ManualClock>
    {
        SharedTokenStore(configuration: configuration, clock: login.clock, logger: Self.logger) {
            try await login()
        }
    }

    @Test("256 concurrent callers with no token cause exactly one login and all get its token")
    func singleFlight() async throws {
        let clock = ManualClock()
        let login = ScriptedLogin(clock: clock)
        login.holdNext()
        let store = makeStore(login)
        let tokens = try await withThrowingTaskGroup(of: IssuedToken.self) { group in
            for _ in 0..<256 { group.addTask { try await store.currentToken() } }
            while !login.isHeld && !Task.isCancelled { await Task.yield() }
            // Let every caller reach the store while the one login is held open.
            for _ in 0..<50 { await Task.yield() }
            login.release()
            return try await group.reduce(into: [IssuedToken]()) { $0.append($1) }
        }
        #expect(login.calls == 1)
        #expect(Set(tokens).count == 1)
        #expect(await store.loginCount() == 1)
    }

    @Test("the token is reused until the refresh margin, then renewed once while the old one stays in use")
    func refreshAhead() async throws {
        let clock = ManualClock()
        let login = ScriptedLogin(clock: clock, script: [.grant(.seconds(100)), .grant(.seconds(100))])
        let store = makeStore(login)  // margin = min(5 min, 10% of 100 s) = 10 s
        let first = try await store.currentToken()
        clock.advance(by: .seconds(89))
        #expect(try await store.currentToken() == first)
        #expect(login.calls == 1)

        clock.advance(by: .seconds(2))  // t = 91 s: inside the margin
        login.holdNext()
        async let renewing = store.currentToken()
        while !login.isHeld && !Task.isCancelled { await Task.yield() }
        #expect(try await store.currentToken() == first, "others keep the old, still valid token during renewal")
        login.release()
        let second = try await renewing
        #expect(second.generation == first.generation + 1)
        #expect(login.calls == 2)
        #expect(try await store.currentToken() == second)
    }

    @Test("the refresh margin is the smaller of 5 minutes and 10% of the lifetime, unless configured")
    func marginRule() {
        let automatic = TokenStoreConfiguration()
        #expect(automatic.margin(forLifetime: .seconds(86_400)) == .seconds(300))
        #expect(automatic.margin(forLifetime: .seconds(10)) == .seconds(1))
        #expect(
            TokenStoreConfiguration(refreshMargin: .seconds(30)).margin(forLifetime: .seconds(3600)) == .seconds(30)
        )
    }

    @Test("a 401 invalidates only the current token: 200 reports of the same token cause one re-login")
    func rejectionIsMatchedToTheCurrentToken() async throws {
        let clock = ManualClock()
        let login = ScriptedLogin(clock: clock)
        let store = makeStore(login)
        let first = try await store.currentToken()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<200 {
                group.addTask {
                    await store.tokenRejected(first)
                    _ = try? await store.currentToken()
                }
            }
        }
        #expect(login.calls == 2)
        let second = try await store.currentToken()
        await store.tokenRejected(first)  // a late report about the old token changes nothing
        #expect(try await store.currentToken() == second)
        #expect(login.calls == 2)
    }

    @Test("forced re-logins are paced to 10 per minute")
    func loginsArePaced() async throws {
        let clock = ManualClock()
        let login = ScriptedLogin(clock: clock)
        let store = makeStore(login)
        let finished = Mutex(false)
        let driver = Task {
            defer { finished.withLock { $0 = true } }
            for _ in 0..<25 {
                let token = try await store.currentToken()
                await store.tokenRejected(token)
            }
        }
        await clock.drive { finished.withLock { $0 } }
        try await driver.value
        let times = login.callTimes.map(\.offset)
        #expect(times.count == 25)
        for (index, time) in times.enumerated() where index >= 10 {
            #expect(times[index - 10] + .seconds(60) <= time, "no more than 10 logins in any 60 s")
        }
        #expect(times.last == .seconds(120), "and no slower than the limit requires")
    }

    @Test("invalid credentials fail at once, typed, and every later caller gets the same error without a login")
    func invalidCredentialsAreFatal() async throws {
        let clock = ManualClock()
        let rejected = NymbleAPIError(.invalidCredentials, endpoint: "login", status: 401, detail: "rejected")
        let login = ScriptedLogin(clock: clock, script: [.fail(rejected)])
        let store = makeStore(login)
        for _ in 0..<3 {
            let error = await #expect(throws: NymbleAPIError.self) { try await store.currentToken() }
            #expect(error?.code == .invalidCredentials)
        }
        #expect(login.calls == 1)
    }

    @Test("a 429 on login waits for its Retry-After before trying again")
    func loginRateLimitedWaits() async throws {
        let clock = ManualClock()
        let limited = NymbleAPIError(.rateLimited, endpoint: "login", status: 429, retryAfter: .seconds(30), detail: "")
        let login = ScriptedLogin(clock: clock, script: [.fail(limited), .grant(.seconds(3600))])
        let store = makeStore(login)
        async let token = store.currentToken()
        await clock.waitForSleepers()
        #expect(login.calls == 1)
        clock.advance(by: .seconds(29))
        #expect(login.calls == 1)
        clock.advance(by: .seconds(1))
        _ = try await token
        #expect(login.callTimes.map(\.offset) == [.zero, .seconds(30)])
    }

    @Test("transient login failures are retried with backoff, then reported to every waiter")
    func transientLoginFailures() async throws {
        let clock = ManualClock()
        let down = NymbleAPIError(.serverError, endpoint: "login", status: 503, detail: "down")
        let login = ScriptedLogin(clock: clock, script: Array(repeating: .fail(down), count: 3))
        let store = makeStore(login, TokenStoreConfiguration(maximumLoginAttempts: 3))
        let finished = Mutex(false)
        let driver = Task {
            defer { finished.withLock { $0 = true } }
            return try await store.currentToken()
        }
        await clock.drive { finished.withLock { $0 } }
        let error = await #expect(throws: NymbleAPIError.self) { try await driver.value }
        #expect(error?.code == .serverError)
        _ = try await store.currentToken()  // not sticky: the next caller tries again and succeeds
        #expect(login.calls == 4)
    }
}
