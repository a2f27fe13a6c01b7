-- The demo's stand-in for your application's own tables: jobs/nightly-sync.json selects the active rows.
CREATE SCHEMA app;
CREATE TABLE app.memberships (
    organization_id text    NOT NULL,
    user_id         text    NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    PRIMARY KEY (organization_id, user_id)
);
INSERT INTO app.memberships (organization_id, user_id, active)
SELECT md5('org' || (n % 50))::text, 'kp_' || lpad(n::text, 8, '0'), n % 10 <> 0
FROM generate_series(1, 5000) AS n;
