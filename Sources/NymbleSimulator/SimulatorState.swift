import Crypto
import EnrichCore
import Foundation
import Synchronization

/// Counters the simulator exposes on `GET /_stats` (and in process through ``NymbleSimulator/stats()``).
public struct SimulatorStats: Sendable, Codable, Equatable {
    /// Successful logins, in every dialect.
    public var logins = 0
    /// Logins refused: 401 (bad credentials) and 429 (over the per-minute limit).
    public var loginsUnauthorized = 0
    public var loginsThrottled = 0
    /// Answers of the enrichment call (Nymble's `/access` and its B2B and AchieveApex equivalents) by class.
    public var access200 = 0
    public var access400 = 0
    public var access401 = 0
    public var access429 = 0
    public var access5xx = 0
    /// `/access` calls whose connection was dropped.
    public var accessDropped = 0
    /// `/access` 401s caused by a token that had expired (a client bug if it happens in the normal case).
    public var expiredTokenUses = 0
    /// B2B: successful refreshes (each rotates the refresh token).
    public var refreshes = 0
    /// B2B: refreshes refused (unknown, expired, revoked or already used refresh token).
    public var refreshesRejected = 0
    /// B2B: refreshes refused because the refresh token had already been used once, a client bug (two
    /// refreshes with one rotating token). Each is counted in ``refreshesRejected`` too.
    public var refreshReuses = 0
    /// AchieveApex: successful re-authentications with the `jwt` strategy.
    public var reauthentications = 0
    /// AchieveApex: successful logouts (`DELETE /authentication`).
    public var logouts = 0
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

    /// When an access token stops being valid.
    private enum Expiry {
        /// Nymble states a lifetime (`ExpiresIn`): measured on the monotonic clock.
        case after(ContinuousClock.Instant)
        /// B2B and AchieveApex state an instant (`access_expires_at`, the JWT's `exp`): wall-clock time.
        case at(Date)
    }

    private struct Token {
        var expiry: Expiry
        var revoked = false
    }

    private struct RefreshToken {
        var expiresAt: Date
        var revoked = false
        /// Rotated away by a refresh: presenting it again is a reuse.
        var used = false
    }

    private struct State {
        var tokens: [String: Token] = [:]
        var refreshTokens: [String: RefreshToken] = [:]
        var loginTimes: [String: [ContinuousClock.Instant]] = [:]
        var bucketLevel: Double
        var bucketUpdatedAt: ContinuousClock.Instant
        var stats = SimulatorStats()
        var tokenCounter = 0
    }

    /// What a B2B login or refresh hands out.
    struct B2BGrant {
        let accessToken: String
        let refreshToken: String
        let accessExpiresAt: Date
        let refreshExpiresAt: Date
    }

    /// The answer to a B2B refresh.
    enum RefreshOutcome {
        case rotated(B2BGrant)
        case expired
        /// Unknown, revoked or already used.
        case invalid
    }

    let configuration: SimulatorConfiguration
    private let state: Mutex<State>
    private let clock = ContinuousClock()
    /// Signs AchieveApex JWTs; random per simulator.
    private let signingKey = SymmetricKey(size: .bits256)

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

    /// Applies the login window of one account (a ClientId, a B2B username or an AchieveApex email). Returns
    /// nil when allowed, else the wait until a slot frees.
    func admitLogin(account: String) -> Duration? {
        let now = clock.now
        return state.withLock { state in
            var times = state.loginTimes[account, default: []].filter { now - $0 < .seconds(60) }
            defer { state.loginTimes[account] = times }
            if times.count >= configuration.loginsPerMinute {
                state.stats.loginsThrottled += 1
                return times[times.count - configuration.loginsPerMinute] + .seconds(60) - now
            }
            times.append(now)
            return nil
        }
    }

    /// Issues a new Nymble token valid for the configured lifetime.
    func issueToken(clientId: String) -> String {
        let now = clock.now
        return state.withLock { state in
            state.tokenCounter += 1
            Self.countLogin(&state, recordTimes: configuration.recordTimes)
            let expiry = Date().addingTimeInterval(configuration.tokenLifetime.inSeconds)
            let token = JWTLike.make(subject: clientId, expiry: expiry, serial: state.tokenCounter)
            state.tokens[token] = Token(expiry: .after(now + configuration.tokenLifetime))
            return token
        }
    }

    /// Issues a B2B access and refresh token after a successful login.
    func issueB2BGrant() -> B2BGrant {
        let now = Date()
        return state.withLock { state in
            Self.countLogin(&state, recordTimes: configuration.recordTimes)
            return grant(&state, now: now)
        }
    }

    /// Rotates a B2B refresh token: a new access and refresh token, the presented one invalid from now on.
    func refresh(_ refreshToken: String) -> RefreshOutcome {
        let now = Date()
        return state.withLock { state in
            guard let token = state.refreshTokens[refreshToken] else {
                state.stats.refreshesRejected += 1
                return .invalid
            }
            if token.used {
                state.stats.refreshesRejected += 1
                state.stats.refreshReuses += 1
                return .invalid
            }
            if token.revoked {
                state.stats.refreshesRejected += 1
                return .invalid
            }
            if token.expiresAt <= now {
                state.stats.refreshesRejected += 1
                return .expired
            }
            state.refreshTokens[refreshToken]?.used = true
            state.stats.refreshes += 1
            return .rotated(grant(&state, now: now))
        }
    }

    private func grant(_ state: inout State, now: Date) -> B2BGrant {
        let accessExpiresAt = Self.wholeSecond(now.addingTimeInterval(configuration.tokenLifetime.inSeconds))
        let refreshLifetime = configuration.refreshTokenLifetime.inSeconds
        let refreshExpiresAt = Self.wholeSecond(now.addingTimeInterval(refreshLifetime))
        let accessToken = "b2b_at_" + Self.randomHex(bytes: 16)
        let refreshToken = "b2b_rt_" + Self.randomHex(bytes: 24)
        state.tokens[accessToken] = Token(expiry: .at(accessExpiresAt))
        state.refreshTokens[refreshToken] = RefreshToken(expiresAt: refreshExpiresAt)
        return B2BGrant(
            accessToken: accessToken,
            refreshToken: refreshToken,
            accessExpiresAt: accessExpiresAt,
            refreshExpiresAt: refreshExpiresAt
        )
    }

    /// Issues an AchieveApex access token (a signed JWT) after a successful login.
    func issueJWT(subject: String) -> String {
        let now = Date()
        let issuedAt = Int(now.timeIntervalSince1970.rounded(.down))
        let expiresAt = issuedAt + max(1, Int(configuration.tokenLifetime.inSeconds.rounded()))
        let token = ApexJWT.make(
            subject: subject,
            issuedAt: issuedAt,
            expiresAt: expiresAt,
            id: Self.randomHex(bytes: 16),
            key: signingKey
        )
        state.withLock { state in
            Self.countLogin(&state, recordTimes: configuration.recordTimes)
            state.tokens[token] = Token(expiry: .at(Date(timeIntervalSince1970: Double(expiresAt))))
        }
        return token
    }

    /// Checks a bearer token; an expired one counts in ``SimulatorStats/expiredTokenUses`` when
    /// `countingExpired` (a use of it, not a re-authentication or logout).
    func check(bearer: String?, countingExpired: Bool = true) -> TokenCheck {
        guard let bearer, !bearer.isEmpty else { return .missing }
        let now = clock.now
        return state.withLock { state in
            guard let token = state.tokens[bearer] else { return .unknown }
            if token.revoked { return .revoked }
            let expired: Bool
            switch token.expiry {
            case .after(let instant): expired = instant <= now
            case .at(let date): expired = date <= Date()
            }
            if expired {
                if countingExpired { state.stats.expiredTokenUses += 1 }
                return .expired
            }
            return .valid
        }
    }

    /// Logs a valid token out (it is invalid from then on); returns what the token was before.
    func logOut(bearer: String?) -> TokenCheck {
        let check = check(bearer: bearer, countingExpired: false)
        guard check == .valid, let bearer else { return check }
        return state.withLock { state in
            guard state.tokens[bearer]?.revoked == false else { return .revoked }  // a concurrent logout won
            state.tokens[bearer]?.revoked = true
            state.stats.logouts += 1
            return .valid
        }
    }

    /// Invalidates every access token issued so far.
    func revokeAll() {
        state.withLock { state in
            for key in state.tokens.keys { state.tokens[key]?.revoked = true }
        }
    }

    /// Invalidates every B2B refresh token issued so far.
    func revokeAllRefreshTokens() {
        state.withLock { state in
            for key in state.refreshTokens.keys { state.refreshTokens[key]?.revoked = true }
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

    private static func countLogin(_ state: inout State, recordTimes: Bool) {
        state.stats.logins += 1
        if recordTimes, state.stats.loginTimes?.count ?? 0 < 10_000 {
            if state.stats.loginTimes == nil { state.stats.loginTimes = [] }
            state.stats.loginTimes?.append(Date().timeIntervalSince1970)
        }
    }

    /// `date` truncated down to the whole second: what a second-precision timestamp states.
    static func wholeSecond(_ date: Date) -> Date {
        Date(timeIntervalSince1970: date.timeIntervalSince1970.rounded(.down))
    }

    static func randomHex(bytes count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        var text = ""
        text.reserveCapacity(count * 2)
        for _ in 0..<count {
            let byte = UInt8.random(in: .min ... .max, using: &generator)
            text += byte < 16 ? "0" + String(byte, radix: 16) : String(byte, radix: 16)
        }
        return text
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

/// AchieveApex access tokens: real HS256 JWTs (header `{"alg":"HS256","typ":"access"}`), signed with the
/// simulator's random key, with the claims a Feathers server issues.
enum ApexJWT {
    static func make(subject: String, issuedAt: Int, expiresAt: Int, id: String, key: SymmetricKey) -> String {
        let header = #"{"alg":"HS256","typ":"access"}"#
        let payload =
            #"{"iat":\#(issuedAt),"exp":\#(expiresAt),"aud":"https://achieveapex.com","iss":"achieveapex","#
            + #""sub":"\#(subject)","jti":"\#(id)"}"#
        let signingInput = JWTLike.base64URL(Data(header.utf8)) + "." + JWTLike.base64URL(Data(payload.utf8))
        let signature = HMAC<SHA256>.authenticationCode(for: Data(signingInput.utf8), using: key)
        return signingInput + "." + JWTLike.base64URL(Data(signature))
    }
}
