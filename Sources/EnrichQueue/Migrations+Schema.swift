/// enrich's schema history. Append new migrations; never edit an applied one.
enum Migrations {
    static let all: [Migration] = [
        initialSchema, newWorkNotifications, claimsAndLiveness, fleetCoordination, fleetRate, runSamples,
        volatileColumnStatistics, refreshTokens,
    ]

    /// Version 1: the queue, its per-state counters, and the job runs (status) table.
    static let initialSchema = Migration(
        version: 1,
        name: "queue, queue counts and job runs",
        statements: [
            """
            CREATE TABLE {schema}.queue_items (
                id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                organization_id  text        NOT NULL,
                user_id          text        NOT NULL,
                state            text        NOT NULL DEFAULT 'pending',
                attempts         integer     NOT NULL DEFAULT 0,
                max_attempts     integer     NOT NULL DEFAULT 5,
                available_at     timestamptz NOT NULL DEFAULT now(),
                lease_owner      text,
                lease_expires_at timestamptz,
                last_error       text,
                customer_number  text,
                price_tier       text,
                currency_code    text,
                enriched_at      timestamptz,
                job_run_id       bigint,
                created_at       timestamptz NOT NULL DEFAULT now(),
                updated_at       timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT queue_items_pair_key UNIQUE (organization_id, user_id),
                CONSTRAINT queue_items_state_check CHECK (state IN ('pending', 'running', 'done', 'failed')),
                CONSTRAINT queue_items_organization_id_check
                    CHECK (btrim(organization_id) <> '' AND length(organization_id) <= 256),
                CONSTRAINT queue_items_user_id_check CHECK (btrim(user_id) <> '' AND length(user_id) <= 256),
                CONSTRAINT queue_items_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
                CONSTRAINT queue_items_lease_check
                    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
            )
            """,
            // Claiming reads the oldest available pending rows, and expired leases, through these two small
            // partial indexes instead of scanning the table.
            "CREATE INDEX queue_items_claim_idx ON {schema}.queue_items (available_at, id) WHERE state = 'pending'",
            "CREATE INDEX queue_items_lease_idx ON {schema}.queue_items (lease_expires_at) WHERE state = 'running'",
            """
            COMMENT ON TABLE {schema}.queue_items IS
                'One row per (organization_id, user_id) pair to enrich; enriched_at IS NULL means not enriched yet'
            """,
            // Counting a million rows by state is a full scan; instead every statement appends its per-state
            // deltas here (insert-only, so writers never wait on each other) and readers sum them.
            """
            CREATE TABLE {schema}.queue_counts (
                state text   NOT NULL,
                delta bigint NOT NULL
            )
            """,
            """
            CREATE FUNCTION {schema}.queue_counts_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {schema}.queue_counts (state, delta)
                SELECT state, count(*) FROM new_rows GROUP BY state;
                RETURN NULL;
            END $$
            """,
            """
            CREATE FUNCTION {schema}.queue_counts_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {schema}.queue_counts (state, delta)
                SELECT state, sum(delta) FROM (
                    SELECT state, -1 AS delta FROM old_rows
                    UNION ALL
                    SELECT state, 1 AS delta FROM new_rows
                ) AS changes
                GROUP BY state HAVING sum(delta) <> 0;
                RETURN NULL;
            END $$
            """,
            """
            CREATE FUNCTION {schema}.queue_counts_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {schema}.queue_counts (state, delta)
                SELECT state, -count(*) FROM old_rows GROUP BY state;
                RETURN NULL;
            END $$
            """,
            """
            CREATE FUNCTION {schema}.queue_counts_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM {schema}.queue_counts;
                RETURN NULL;
            END $$
            """,
            """
            CREATE TRIGGER queue_counts_insert AFTER INSERT ON {schema}.queue_items
                REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
                EXECUTE FUNCTION {schema}.queue_counts_on_insert()
            """,
            """
            CREATE TRIGGER queue_counts_update AFTER UPDATE ON {schema}.queue_items
                REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
                EXECUTE FUNCTION {schema}.queue_counts_on_update()
            """,
            """
            CREATE TRIGGER queue_counts_delete AFTER DELETE ON {schema}.queue_items
                REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
                EXECUTE FUNCTION {schema}.queue_counts_on_delete()
            """,
            """
            CREATE TRIGGER queue_counts_truncate AFTER TRUNCATE ON {schema}.queue_items
                FOR EACH STATEMENT EXECUTE FUNCTION {schema}.queue_counts_on_truncate()
            """,
            // Folds the appended deltas into one row per state. Rows of transactions still open are not
            // visible to the DELETE and are kept, so no delta is ever lost.
            """
            CREATE FUNCTION {schema}.compact_queue_counts() RETURNS void LANGUAGE sql AS $$
                WITH folded AS (DELETE FROM {schema}.queue_counts RETURNING state, delta)
                INSERT INTO {schema}.queue_counts (state, delta)
                SELECT state, sum(delta) FROM folded GROUP BY state HAVING sum(delta) <> 0
            $$
            """,
            """
            CREATE VIEW {schema}.queue_summary AS
                SELECT state, sum(delta)::bigint AS items FROM {schema}.queue_counts GROUP BY state
            """,
            """
            CREATE TABLE {schema}.job_runs (
                id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                job_name     text        NOT NULL,
                trigger      text        NOT NULL DEFAULT 'cli',
                host         text        NOT NULL,
                pid          integer     NOT NULL,
                state        text        NOT NULL DEFAULT 'running',
                started_at   timestamptz NOT NULL DEFAULT now(),
                finished_at  timestamptz,
                heartbeat_at timestamptz NOT NULL DEFAULT now(),
                total_items  bigint,
                claimed      bigint      NOT NULL DEFAULT 0,
                succeeded    bigint      NOT NULL DEFAULT 0,
                failed       bigint      NOT NULL DEFAULT 0,
                retried      bigint      NOT NULL DEFAULT 0,
                throttled    bigint      NOT NULL DEFAULT 0,
                logins       bigint      NOT NULL DEFAULT 0,
                last_error   text,
                settings     jsonb       NOT NULL DEFAULT '{}',
                CONSTRAINT job_runs_trigger_check CHECK (trigger IN ('cli', 'cron')),
                CONSTRAINT job_runs_state_check
                    CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted', 'abandoned')),
                CONSTRAINT job_runs_finished_check CHECK ((state = 'running') = (finished_at IS NULL))
            )
            """,
            "CREATE INDEX job_runs_job_started_idx ON {schema}.job_runs (job_name, started_at DESC)",
            "CREATE INDEX job_runs_running_idx ON {schema}.job_runs (heartbeat_at) WHERE state = 'running'",
            """
            COMMENT ON TABLE {schema}.job_runs IS
                'One row per enrich run: who ran it, its state, heartbeat and counters (the job status table)'
            """,
        ]
    )

    /// Version 2: `NOTIFY enrich_<schema>` when rows become pending, so `enrich run --follow` wakes at once.
    static let newWorkNotifications = Migration(
        version: 2,
        name: "notify workers of new pending rows",
        statements: [
            """
            CREATE FUNCTION {schema}.queue_notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'pending') THEN
                    PERFORM pg_notify('enrich_' || TG_TABLE_SCHEMA, '');
                END IF;
                RETURN NULL;
            END $$
            """,
            """
            CREATE TRIGGER queue_notify_insert AFTER INSERT ON {schema}.queue_items
                REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
                EXECUTE FUNCTION {schema}.queue_notify_pending()
            """,
            """
            CREATE TRIGGER queue_notify_update AFTER UPDATE ON {schema}.queue_items
                REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
                EXECUTE FUNCTION {schema}.queue_notify_pending()
            """,
        ]
    )

    /// Version 3: attempts count calls, not claims; takeovers are counted apart; runs prove they are alive.
    ///
    /// - `claims` (the fencing token, one per claim) replaces `attempts` in write fences; `attempts` now
    ///   counts calls whose outcome was written, so a crash loop no longer spends the attempts of rows it
    ///   never sent; `takeovers` counts rows taken back from a worker that stopped holding them.
    /// - `job_runs.liveness`: the run holds a session advisory lock on its id while it lives, so a dead run
    ///   is seen at once; `stalled_since`: the run holds rows but completes none (a stuck run).
    static let claimsAndLiveness = Migration(
        version: 3,
        name: "claims, takeovers, run liveness and stalls",
        statements: [
            "ALTER TABLE {schema}.queue_items ADD COLUMN claims integer NOT NULL DEFAULT 0",
            "ALTER TABLE {schema}.queue_items ADD COLUMN takeovers integer NOT NULL DEFAULT 0",
            // Rows held by a worker of an earlier version keep their fence (it was the attempt number).
            "UPDATE {schema}.queue_items SET claims = attempts WHERE state = 'running'",
            "ALTER TABLE {schema}.job_runs ADD COLUMN liveness boolean NOT NULL DEFAULT false",
            "ALTER TABLE {schema}.job_runs ADD COLUMN stalled_since timestamptz",
            "CREATE INDEX queue_items_run_idx ON {schema}.queue_items (job_run_id) WHERE state = 'running'",
        ]
    )

    /// Version 4: what the workers of a schema share (the fleet): one login token per API identity and one
    /// send budget per API.
    ///
    /// - `api_credentials`, one row per (API base URL, OrgCode, ClientId), keyed by a SHA-256 of the three
    ///   (never the secret): the token sealed with AES-GCM under a key derived from the ClientSecret, its
    ///   generation, expiry and refresh-ahead time on the database's clock; the login lease (one process
    ///   logs in at a time; a process that dies mid-login loses it when it expires); the login times of
    ///   the last hour (the vendor's 10 logins/min per ClientId is kept fleet-wide); a refusal of the
    ///   credentials, tied to an HMAC fingerprint of the refused secret.
    /// - `api_limiter`, one row per API base URL: the GCRA theoretical arrival time of the next free send
    ///   slot (`tat`), which processes reserve in blocks, and the fleet-wide pause after a 429, numbered by
    ///   congestion event (`pause_events`) so that every worker slows down once per event.
    static let fleetCoordination = Migration(
        version: 4,
        name: "fleet: shared token and send budget",
        statements: [
            """
            CREATE TABLE {schema}.api_credentials (
                key text PRIMARY KEY,
                generation bigint NOT NULL DEFAULT 0,
                sealed_token bytea,
                expires_at timestamptz,
                refresh_at timestamptz,
                login_owner text,
                login_until timestamptz,
                login_times timestamptz[] NOT NULL DEFAULT '{}',
                logins bigint NOT NULL DEFAULT 0,
                refused_fingerprint text,
                refused_message text,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE {schema}.api_limiter (
                key text PRIMARY KEY,
                tat timestamptz NOT NULL DEFAULT now(),
                paused_until timestamptz,
                reserved bigint NOT NULL DEFAULT 0,
                reservations bigint NOT NULL DEFAULT 0,
                pause_events bigint NOT NULL DEFAULT 0,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ]
    )

    /// Version 5: without a known rate, the fleet's adaptive rate is decided once, by one leader (a lease on
    /// the budget row: `leader`, `leader_until`; `leader_turns` and `lead_gap`, the time the fleet went
    /// without a leader before the current one), from fleet-wide accepted calls (`accepted`, added by every
    /// worker as it reserves or reads), and shared through `rate` (nil: unlimited) and `ceiling`.
    static let fleetRate = Migration(
        version: 5,
        name: "a shared adaptive rate decided by one leader",
        statements: [
            """
            ALTER TABLE {schema}.api_limiter
                ADD COLUMN rate float8,
                ADD COLUMN ceiling float8,
                ADD COLUMN accepted bigint NOT NULL DEFAULT 0,
                ADD COLUMN leader text,
                ADD COLUMN leader_until timestamptz,
                ADD COLUMN leader_turns bigint NOT NULL DEFAULT 0,
                ADD COLUMN lead_gap interval,
                ADD COLUMN rate_changes bigint NOT NULL DEFAULT 0
            """
        ]
    )

    /// Version 6: each heartbeat's counters, kept for two weeks, so that the status page draws throughput and
    /// 429s over time for the recent runs.
    static let runSamples = Migration(
        version: 6,
        name: "run samples for the status page",
        statements: [
            """
            CREATE TABLE {schema}.run_samples (
                run_id bigint NOT NULL,
                at timestamptz NOT NULL,
                succeeded bigint NOT NULL,
                failed bigint NOT NULL,
                throttled bigint NOT NULL,
                PRIMARY KEY (run_id, at)
            )
            """,
            "CREATE INDEX run_samples_at_idx ON {schema}.run_samples (at)",
        ]
    )

    /// Version 7: no planner statistics for the lease columns. Their values change for every row during a
    /// run, so whatever ANALYZE sees is wrong moments later: statistics taken while every row was pending say
    /// `lease_owner` is always NULL, and the planner then wrote each batch back with a scan of the whole
    /// table in a nested loop (200–360 ms per 500 rows instead of a few) after the run's own ANALYZE
    /// (``Queue/refreshStatisticsIfStale()``). Without statistics it falls back to its default estimates
    /// and joins by primary key. (Statistics an earlier ANALYZE left stay in the catalog, which only a
    /// superuser can clear: the write-back compares the owner in a way no statistics reach, see
    /// `Queue.writeBackQuery`.)
    static let volatileColumnStatistics = Migration(
        version: 7,
        name: "no planner statistics for the lease columns",
        statements: [
            """
            ALTER TABLE {schema}.queue_items
                ALTER COLUMN lease_owner SET STATISTICS 0,
                ALTER COLUMN lease_expires_at SET STATISTICS 0,
                ALTER COLUMN job_run_id SET STATISTICS 0
            """
        ]
    )

    /// Version 8: what the API dialects renew and end sessions with. B2B's refresh token is sealed like the
    /// access token (each is used once: it rotates); `refreshes` and `logouts` count renewals with it and
    /// sessions ended by the fleet's last worker.
    static let refreshTokens = Migration(
        version: 8,
        name: "fleet: refresh tokens and logouts",
        statements: [
            """
            ALTER TABLE {schema}.api_credentials
                ADD COLUMN sealed_refresh_token bytea,
                ADD COLUMN refresh_token_expires_at timestamptz,
                ADD COLUMN refreshes bigint NOT NULL DEFAULT 0,
                ADD COLUMN logouts bigint NOT NULL DEFAULT 0
            """
        ]
    )
}
