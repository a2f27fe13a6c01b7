import EnrichCore
import Foundation
import Synchronization

/// Counters the simulator exposes on `GET /_stats` (and in process through ``NymbleSimulator/stats()``).
public struct SimulatorStats: Sendable, Codable, Equatable {
    /// Successful logins.
    public var logins = 0
    /// Logins refused: 401 (bad credentials) and 429 (over 10 per minute).
    public var loginsUnauthorized = 0
    public var loginsThrottled = 0
    /// `/access` answers by class.
    public var access200 = 0
    public var access400 = 0
    public var access401 = 0
    public var access429 = 0
    public var access5xx = 0
    /// `/access` calls whose connection was dropped.
    public var accessDropped = 0
    /// `/access` 401s caused by a token that had expired (a client bug if it happens in the normal case).
    public var expiredTokenUses = 0
    /// Most requests in flight at once.
    public var peakConcurrentRequests = 0
    public var inFlight = 0
    /// With ``SimulatorConfiguration/recordTimes``: Unix time of each successful login (first 10,000).
    public var loginTimes: [Double]? = nil
    /// With ``SimulatorConfiguration/recordTimes``: UserId → Unix time its first `/access` call arrived
    /// (first 10,000 UserIds), for measuring pickup latency.
    public var accessArrivals: [String: Double]? = nil

    public init() {}

    /// Every `/access` call received.
    public var accessCalls: Int { access200 + access400 + access401 + access429 + access5xx + accessDropped }
}

/// The simulator's mutable state behind one lock: issued tokens, the login window, the access bucket and
/// the counters. Each method is a short critical section with no I/O.
final class SimulatorState: Sendable {
    enum TokenCheck { case valid, missing, expired, revoked, unknown }

    private struct Token {
        var expiresAt: ContinuousClock.Instant
        var revoked = false
    }

    private struct State {
        var tokens: [String: Token] = [:]
        var loginTimes: [String: [ContinuousClock.Instant]] = [:]
        var bucketLevel: Double
        var bucketUpdatedAt: ContinuousClock.Instant
        var stats = SimulatorStats()
        var tokenCounter = 0
    }

    let configuration: SimulatorConfiguration
    private let state: Mutex<State>
    private let clock = ContinuousClock()

    init(configuration: SimulatorConfiguration) {
        self.configuration = configuration
        let burst = configuration.accessBurst ?? max(1, configuration.accessRate ?? 1)
        self.state = Mutex(State(bucketLevel: burst, bucketUpdatedAt: ContinuousClock.now))
    }

    func stats() -> SimulatorStats { state.withLock { $0.stats } }

    func update(_ body: (inout SimulatorStats) -> Void) { state.withLock { body(&$0.stats) } }

    /// Records when the first call for `userId` arrived (only with ``SimulatorConfiguration/recordTimes``).
    func recordArrival(userId: String) {
        guard configuration.recordTimes else { return }
        let now = Date().timeIntervalSince1970
        state.withLock { state in
            if state.stats.accessArrivals == nil { state.stats.accessArrivals = [:] }
            guard let count = state.stats.accessArrivals?.count, count < 10_000,
                state.stats.accessArrivals?[userId] == nil
            else { return }
            state.stats.accessArrivals?[userId] = now  // in place: no copy of the dictionary
        }
    }

    func enter() {
        state.withLock {
            $0.stats.inFlight += 1
            $0.stats.peakConcurrentRequests = max($0.stats.peakConcurrentRequests, $0.stats.inFlight)
        }
    }

    func leave() { state.withLock { $0.stats.inFlight -= 1 } }

    /// Applies the per-ClientId login window. Returns nil when allowed, else the wait until a slot frees.
    func admitLogin(clientId: String) -> Duration? {
        let now = clock.now
        return state.withLock { state in
            var times = state.loginTimes[clientId, default: []].filter { now - $0 < .seconds(60) }
            defer { state.loginTimes[clientId] = times }
            if times.count >= configuration.loginsPerMinute {
                state.stats.loginsThrottled += 1
                return times[times.count - configuration.loginsPerMinute] + .seconds(60) - now
            }
            times.append(now)
            return nil
        }
    }

    /// Issues a new token valid for the configured lifetime.
    func issueToken(clientId: String) -> String {
        let now = clock.now
        return state.withLock { state in
            state.tokenCounter += 1
            state.stats.logins += 1
            if configuration.recordTimes, state.stats.loginTimes?.count ?? 0 < 10_000 {
                if state.stats.loginTimes == nil { state.stats.loginTimes = [] }
                state.stats.loginTimes?.append(Date().timeIntervalSince1970)
            }
            let expiry = Date().addingTimeInterval(configuration.tokenLifetime.inSeconds)
            let token = JWTLike.make(subject: clientId, expiry: expiry, serial: state.tokenCounter)
            state.tokens[token] = Token(expiresAt: now + configuration.tokenLifetime)
            return token
        }
    }

    func check(bearer: String?) -> TokenCheck {
        guard let bearer, !bearer.isEmpty else { return .missing }
        let now = clock.now
        return state.withLock { state in
            guard let token = state.tokens[bearer] else { return .unknown }
            if token.revoked { return .revoked }
            if token.expiresAt <= now {
                state.stats.expiredTokenUses += 1
                return .expired
            }
            return .valid
        }
    }

    /// Invalidates every token issued so far.
    func revokeAll() {
        state.withLock { state in
            for key in state.tokens.keys { state.tokens[key]?.revoked = true }
        }
    }

    /// Takes one request from the `/access` token bucket. Returns nil when allowed, else the wait until
    /// the bucket holds a whole token again.
    func admitAccess() -> Duration? {
        guard let rate = configuration.accessRate else { return nil }
        let burst = configuration.accessBurst ?? max(1, rate)
        let now = clock.now
        return state.withLock { state in
            let elapsed = (now - state.bucketUpdatedAt).inSeconds
            state.bucketLevel = min(burst, state.bucketLevel + elapsed * rate)
            state.bucketUpdatedAt = now
            if state.bucketLevel >= 1 {
                state.bucketLevel -= 1
                return nil
            }
            return .seconds((1 - state.bucketLevel) / rate)
        }
    }
}

/// Tokens shaped like a JWT (header.payload.signature, base64url) with an `exp` claim.
enum JWTLike {
    static func make(subject: String, expiry: Date, serial: Int) -> String {
        let header = #"{"alg":"HS256","typ":"JWT"}"#
        let payload = #"{"sub":"\#(subject)","exp":\#(Int(expiry.timeIntervalSince1970)),"jti":\#(serial)}"#
        var signature = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for index in signature.indices { signature[index] = generator.next() }
        return [Data(header.utf8), Data(payload.utf8), Data(signature)].map(base64URL).joined(separator: ".")
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
