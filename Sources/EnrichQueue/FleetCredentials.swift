import PostgresNIO

/// The login state every worker of a schema shares for one API identity (a row of `api_credentials`):
/// the sealed token and its generation, its expiry and refresh-ahead time on the database's clock, the
/// login lease and the fleet's recent logins. SQL only: sealing, waiting and retrying belong to the caller
/// (`FleetTokenSource`). All times are the database's, so processes on hosts with skewed clocks agree.
public struct FleetCredentials: Sendable {
    public let database: Database
    /// SHA-256 of the API base URL, OrgCode and ClientId, in hex: never the secret.
    public let key: String

    public init(database: Database, key: String) {
        self.database = database
        self.key = key
    }

    /// What a process needs to decide between using the shared token, waiting, and logging in itself.
    public struct Snapshot: Sendable {
        public var generation: Int64
        public var sealedToken: [UInt8]?
        /// Time left before the token expires (negative once it has).
        public var expiresIn: Duration?
        /// Time left before the token should be renewed (negative once it should).
        public var refreshIn: Duration?
        /// Another process holds the login lease (a login is under way).
        public var loginUnderWay: Bool
        /// The fingerprint of a secret the API refused, and the refusal in words.
        public var refused: (fingerprint: String, message: String)?
        public var loginsLastHour: Int
        /// B2B: the sealed refresh token of the current grant (until a worker takes it to refresh).
        public var sealedRefreshToken: [UInt8]?
        /// Time left before the refresh token expires.
        public var refreshTokenExpiresIn: Duration?
    }

    /// Creates the row when it does not exist yet.
    public func prepare() async throws {
        try await database.query(
            "prepare the shared credentials",
            """
            INSERT INTO \(unescaped: database.schema).api_credentials (key) VALUES (\(key))
            ON CONFLICT (key) DO NOTHING
            """
        )
    }

    /// The row as `owner` sees it now.
    public func read(owner: String) async throws -> Snapshot {
        let rows = try await database.query(
            "read the shared credentials",
            """
            SELECT generation, sealed_token,
                EXTRACT(EPOCH FROM expires_at - now())::float8, EXTRACT(EPOCH FROM refresh_at - now())::float8,
                login_owner IS NOT NULL AND login_owner <> \(owner) AND login_until > now(),
                refused_fingerprint, refused_message,
                (SELECT count(*) FROM unnest(login_times) AS t WHERE t > now() - interval '1 hour')::integer,
                sealed_refresh_token, EXTRACT(EPOCH FROM refresh_token_expires_at - now())::float8
            FROM \(unescaped: database.schema).api_credentials WHERE key = \(key)
            """
        )
        guard let row = rows.first else {
            throw DatabaseError(.queryFailed, "the shared credentials row \(key) is missing")
        }
        let (
            generation, sealed, expiresIn, refreshIn, underWay, fingerprint, message, logins, sealedRefresh, refreshLife
        ) =
            try row.decode(
                (Int64, ByteBuffer?, Double?, Double?, Bool, String?, String?, Int32, ByteBuffer?, Double?).self
            )
        return Snapshot(
            generation: generation,
            sealedToken: sealed.map { Array($0.readableBytesView) },
            expiresIn: expiresIn.map { .seconds($0) },
            refreshIn: refreshIn.map { .seconds($0) },
            loginUnderWay: underWay,
            refused: fingerprint.map { ($0, message ?? "the credentials were refused") },
            loginsLastHour: Int(logins),
            sealedRefreshToken: sealedRefresh.map { Array($0.readableBytesView) },
            refreshTokenExpiresIn: refreshLife.map { .seconds($0) }
        )
    }

    /// Takes the login lease for `owner` if the token is still at `generation` (nobody renewed it meanwhile)
    /// and no other process holds the lease. Returns nil when not taken; otherwise how long to wait before
    /// the fleet's login limit (`limit` logins per `window`) allows a login (zero: at once).
    public func takeLoginLease(
        owner: String,
        generation: Int64,
        lease: Duration,
        limit: Int,
        window: Duration
    ) async throws -> Duration? {
        let rows = try await database.query(
            "take the login lease",
            """
            UPDATE \(unescaped: database.schema).api_credentials SET
                login_owner = \(owner), login_until = now() + make_interval(secs => \(lease.inSeconds))
            WHERE key = \(key) AND generation = \(generation)
                AND (login_owner IS NULL OR login_until < now() OR login_owner = \(owner))
            RETURNING COALESCE(EXTRACT(EPOCH FROM (
                SELECT t FROM unnest(login_times) AS t
                WHERE t > now() - make_interval(secs => \(window.inSeconds))
                ORDER BY t DESC OFFSET \(Int32(max(limit, 1) - 1)) LIMIT 1
            ) + make_interval(secs => \(window.inSeconds)) - now()), 0)::float8
            """
        )
        guard let wait = try rows.first?.decode(Double.self) else { return nil }
        return .seconds(max(wait, 0))
    }

    /// Counts a login request about to be sent by the lease holder `owner` (login times older than an hour
    /// are dropped) and extends its lease by `lease`. False when `owner` no longer holds the lease (it lapsed
    /// and another worker took it): nothing is counted, and no login may be sent.
    public func recordLoginAttempt(owner: String, lease: Duration) async throws -> Bool {
        let rows = try await database.query(
            "count a login",
            """
            UPDATE \(unescaped: database.schema).api_credentials SET
                login_times = ARRAY(SELECT t FROM unnest(login_times) AS t
                                    WHERE t > now() - interval '1 hour' ORDER BY t) || now(),
                logins = logins + 1,
                login_until = now() + make_interval(secs => \(lease.inSeconds)),
                updated_at = now()
            WHERE key = \(key) AND login_owner = \(owner) AND login_until > now()
            RETURNING 1
            """
        )
        return rows.first != nil
    }

    /// Stores a new token (sealed) obtained `sentAgo` ago with `lifetime`, renewed `margin` before it
    /// expires, with the refresh token that came with it (sealed, and its lifetime) or none; frees the lease
    /// and clears a refusal. `refreshed`: it came from a refresh, not a login. Returns the new generation.
    public func storeToken(
        sealed: [UInt8],
        lifetime: Duration,
        margin: Duration,
        sentAgo: Duration,
        refreshToken: (sealed: [UInt8], lifetime: Duration)? = nil,
        refreshed: Bool = false
    ) async throws -> Int64 {
        let expires = (lifetime - sentAgo).inSeconds
        let refreshSealed = refreshToken.map { ByteBuffer(bytes: $0.sealed) }
        let refreshExpires = refreshToken.map { ($0.lifetime - sentAgo).inSeconds }
        let rows = try await database.query(
            "store the shared token",
            """
            UPDATE \(unescaped: database.schema).api_credentials SET
                generation = generation + 1, sealed_token = \(ByteBuffer(bytes: sealed)),
                expires_at = now() + make_interval(secs => \(expires)),
                refresh_at = now() + make_interval(secs => \(expires - margin.inSeconds)),
                sealed_refresh_token = \(refreshSealed),
                refresh_token_expires_at = now() + make_interval(secs => \(refreshExpires)),
                refreshes = refreshes + \(refreshed ? 1 : 0),
                login_owner = NULL, login_until = NULL, refused_fingerprint = NULL, refused_message = NULL,
                updated_at = now()
            WHERE key = \(key)
            RETURNING generation
            """
        )
        guard let generation = try rows.first?.decode(Int64.self) else {
            throw DatabaseError(.queryFailed, "the shared credentials row \(key) is missing")
        }
        return generation
    }

    /// Takes the refresh token for the lease holder `owner`, removing it from the row in the same statement:
    /// it rotates, so whoever sends it must be the only one ever to (even if the lease then expires). nil
    /// when there is none, or `owner` does not hold the lease. The lease is extended by `lease`.
    public func takeRefreshToken(owner: String, lease: Duration) async throws -> [UInt8]? {
        let rows = try await database.query(
            "take the refresh token",
            """
            UPDATE \(unescaped: database.schema).api_credentials AS c SET
                sealed_refresh_token = NULL, refresh_token_expires_at = NULL, updated_at = now(),
                login_until = now() + make_interval(secs => \(lease.inSeconds))
            FROM (SELECT sealed_refresh_token FROM \(unescaped: database.schema).api_credentials
                  WHERE key = \(key) FOR UPDATE) AS old
            WHERE c.key = \(key) AND c.login_owner = \(owner) AND c.login_until > now()
                AND old.sealed_refresh_token IS NOT NULL
            RETURNING old.sealed_refresh_token
            """
        )
        return try rows.first.map { Array(try $0.decode(ByteBuffer.self).readableBytesView) }
    }

    /// Ends the fleet's session when no other run of the schema is live (see ``JobRuns`` for how a dead run
    /// is told: its liveness lock is gone, or its heartbeat is older than `staleAfter`): clears the tokens
    /// and returns the sealed access token that was current, for the caller to log out. nil when another
    /// run is live or there is no token. Of workers stopping together, the statement lets exactly one
    /// through (each has ended its own run first).
    public func endSession(staleAfter: Duration) async throws -> [UInt8]? {
        let dead = JobRuns(database: database).deadCondition(staleAfter: staleAfter)
        let rows = try await database.query(
            "end the fleet's session",
            """
            UPDATE \(unescaped: database.schema).api_credentials AS c SET
                generation = c.generation + 1, sealed_token = NULL, expires_at = NULL, refresh_at = NULL,
                sealed_refresh_token = NULL, refresh_token_expires_at = NULL, logouts = c.logouts + 1,
                updated_at = now()
            FROM (SELECT sealed_token FROM \(unescaped: database.schema).api_credentials
                  WHERE key = \(key) FOR UPDATE) AS old
            WHERE c.key = \(key) AND old.sealed_token IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM \(unescaped: database.schema).job_runs AS r
                                WHERE r.state = 'running' AND NOT \(unescaped: dead))
            RETURNING old.sealed_token
            """
        )
        return try rows.first.map { Array(try $0.decode(ByteBuffer.self).readableBytesView) }
    }

    /// Frees the login lease of `owner` (its login failed, or it stops).
    public func releaseLoginLease(owner: String) async throws {
        try await database.query(
            "free the login lease",
            """
            UPDATE \(unescaped: database.schema).api_credentials SET login_owner = NULL, login_until = NULL
            WHERE key = \(key) AND login_owner = \(owner)
            """
        )
    }

    /// Records that the API refused the credentials whose secret has `fingerprint`: every worker with the
    /// same secret stops with `message`, until a login with another secret succeeds.
    public func recordRefusal(fingerprint: String, message: String) async throws {
        try await database.query(
            "record refused credentials",
            """
            UPDATE \(unescaped: database.schema).api_credentials SET
                refused_fingerprint = \(fingerprint), refused_message = \(message),
                login_owner = NULL, login_until = NULL, updated_at = now()
            WHERE key = \(key)
            """
        )
    }

    /// The API answered 401 to the token of `generation`: it expires now for the whole fleet, unless a
    /// newer one has replaced it already (so any number of 401s for one token cause one login).
    public func expire(generation: Int64) async throws {
        try await database.query(
            "expire the shared token",
            """
            UPDATE \(unescaped: database.schema).api_credentials SET
                expires_at = least(expires_at, now()), refresh_at = least(refresh_at, now()), updated_at = now()
            WHERE key = \(key) AND generation = \(generation)
            """
        )
    }
}
