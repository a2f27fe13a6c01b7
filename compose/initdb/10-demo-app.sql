-- The demo's stand-in for your application's own tables: jobs/nightly-sync.json selects the active rows
-- and its write-back target fills in the commerce context (same transaction as enrich's queue).
CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE IF NOT EXISTS app.memberships (
    organization_id text    NOT NULL,
    user_id         text    NOT NULL,
    active          boolean NOT NULL DEFAULT true,
    customer_number text,
    price_tier      text,
    currency_code   text,
    enriched_at     timestamptz,
    PRIMARY KEY (organization_id, user_id)
);
INSERT INTO app.memberships (organization_id, user_id, active)
SELECT md5('org' || (n % 50))::text,
       -- Every 500th id is malformed on purpose: the API answers 400 and `enrich failures` shows why.
       CASE WHEN n % 500 = 0 THEN 'kp bad #' || n ELSE 'kp_' || lpad(n::text, 8, '0') END,
       n % 10 <> 1
FROM generate_series(1, 5000) AS n
ON CONFLICT DO NOTHING;
