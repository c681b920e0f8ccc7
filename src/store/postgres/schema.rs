//! The schema: its migrations, applied once each under an advisory lock,
//! and the statements `tokenauth migrate` copies a sled database with (so
//! that the SQL of every table lives here).

use deadpool_postgres::{GenericClient, Pool};

use crate::store::StoreError;

/// Schema versions, applied in order, each once, in one transaction that
/// holds an advisory lock (replicas starting together do not race). Never
/// edit a released migration: add one.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r"
CREATE TABLE tokens (
    id            bytea PRIMARY KEY,
    org_id        text NOT NULL,
    workspace_id  text NOT NULL,
    owner_user_id text NOT NULL,
    kind          smallint NOT NULL,
    expires_at_us bigint,
    revoked_at_us bigint,
    record        bytea NOT NULL
);
CREATE INDEX tokens_by_org ON tokens (org_id, id);
CREATE INDEX tokens_by_workspace ON tokens (org_id, workspace_id, id);
CREATE INDEX tokens_by_owner ON tokens (org_id, owner_user_id, id);
CREATE TABLE digests (
    digest   bytea PRIMARY KEY,
    token_id bytea NOT NULL REFERENCES tokens (id)
);
CREATE INDEX digests_by_token ON digests (token_id);
CREATE TABLE audit (
    key   bytea PRIMARY KEY,
    id    bytea NOT NULL,
    event bytea NOT NULL
);
CREATE INDEX audit_by_id ON audit (id);
CREATE TABLE usage (
    org_key   bytea PRIMARY KEY,
    token_key bytea NOT NULL UNIQUE,
    minute_us bigint NOT NULL,
    count     bigint NOT NULL
);
CREATE INDEX usage_by_minute ON usage (minute_us);
CREATE TABLE last_used (
    token_id bytea PRIMARY KEY,
    at_us    bigint NOT NULL
);
CREATE TABLE pepper_checks (
    key_id      bigint PRIMARY KEY,
    check_value bytea NOT NULL
);
CREATE TABLE revocation_clock (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL
);
INSERT INTO revocation_clock (seq) VALUES (0);
CREATE TABLE revocations (
    seq     bigint PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    digests bytea[] NOT NULL
);
CREATE TABLE health_probe (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    at       timestamptz NOT NULL
);
",
    ),
    (
        2,
        // The tokens not revoked, ordered by expiry, three ways: what quotas
        // count and RevokeAll revokes, without reading revoked or long
        // expired rows (the expression is `EXPIRY`, to the letter, so that
        // the planner matches it).
        r"
CREATE INDEX tokens_live_by_owner ON tokens
    (org_id, owner_user_id, (COALESCE(expires_at_us, 9223372036854775807)), id)
    WHERE revoked_at_us IS NULL;
CREATE INDEX tokens_live_by_kind ON tokens
    (org_id, kind, (COALESCE(expires_at_us, 9223372036854775807)), id)
    WHERE revoked_at_us IS NULL;
CREATE INDEX tokens_live_by_workspace ON tokens
    (org_id, kind, workspace_id, (COALESCE(expires_at_us, 9223372036854775807)), id)
    WHERE revoked_at_us IS NULL;
",
    ),
    (
        3,
        // Usage rolls up as it ages: each row says its bucket's width
        // (0 minute, 1 hour, 2 day; rolled-up rows' keys end in it), and
        // upkeep takes the oldest rows of one width.
        r"
ALTER TABLE usage ADD COLUMN resolution smallint NOT NULL DEFAULT 0;
DROP INDEX usage_by_minute;
CREATE INDEX usage_by_resolution ON usage (resolution, minute_us);
",
    ),
    (
        4,
        // Members and their roles (SetMember), keyed as sled's tree is
        // (`keys::member_key`: an organization's rows sort by user id).
        r"
CREATE TABLE members (
    key     bytea PRIMARY KEY,
    org_id  text NOT NULL,
    user_id text NOT NULL,
    member  bytea NOT NULL
);
CREATE INDEX members_by_org ON members (org_id, key);
",
    ),
    (
        5,
        // Each token's latest client addresses, encoded as sled's tree
        // holds them (`records::encode_client_addresses`), keyed by the
        // token id as `last_used` is.
        r"
CREATE TABLE client_addresses (
    token_id bytea PRIMARY KEY,
    entries  bytea NOT NULL
);
",
    ),
    (
        6,
        // The change feed (`feed.rs`): each change's event again, written in
        // its transaction, at (the writing transaction's id, a sequence
        // number). Readers serve only rows of transactions older than every
        // one still running, so that no row can later appear below a cursor
        // already served (a sequence number alone is taken before commit).
        r"
CREATE TABLE feed (
    xact    bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq     bigserial,
    org_id  text NOT NULL,
    at_us   bigint NOT NULL,
    event   bytea NOT NULL,
    PRIMARY KEY (xact, seq)
);
CREATE INDEX feed_by_org ON feed (org_id, xact, seq);
CREATE INDEX feed_by_time ON feed (at_us);
",
    ),
    (
        7,
        // Webhook delivery (`webhooks.rs`): each endpoint's cursor in the
        // feed and count of parked deliveries dropped past its bound, and
        // its parked deliveries by cursor (`store::webhooks`' codec).
        r"
CREATE TABLE webhook_progress (
    endpoint     text PRIMARY KEY,
    cursor_major bigint NOT NULL,
    cursor_minor bigint NOT NULL,
    dropped      bigint NOT NULL DEFAULT 0
);
CREATE TABLE webhook_failed (
    endpoint     text NOT NULL,
    cursor_major bigint NOT NULL,
    cursor_minor bigint NOT NULL,
    record       bytea NOT NULL,
    PRIMARY KEY (endpoint, cursor_major, cursor_minor)
);
",
    ),
];

/// The schema version this binary knows.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    // The usual start: the schema is up to date, and nothing is created
    // (so replicas may run as a role without rights to change the schema).
    let exists: bool = client
        .query_one("SELECT to_regclass('tokenauth_schema') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if exists {
        let current: i32 = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM tokenauth_schema",
                &[],
            )
            .await?
            .try_get(0)?;
        if current == schema_version() {
            return Ok(());
        }
    }
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('tokenauth schema'));
         CREATE TABLE IF NOT EXISTS tokenauth_schema (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tokenauth_schema",
            &[],
        )
        .await?
        .try_get(0)?;
    if current > schema_version() {
        return Err(StoreError::Unavailable(format!(
            "the database's schema is version {current}, newer than this binary's ({}): \
             run a newer tokenauth",
            schema_version()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tokenauth_schema (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "applied a database schema migration");
    }
    tx.commit().await?;
    Ok(())
}

/// What `tokenauth migrate` writes and reads back, table by table: upserts
/// of a batch of rows (unnest over arrays, one per column), and each table
/// read back in the key order of its sled tree, for the checksums.
pub(crate) const READ_BACK_TOKENS: &str = "SELECT id, record FROM tokens ORDER BY id";
pub(crate) const READ_BACK_DIGESTS: &str = "SELECT digest, token_id FROM digests ORDER BY digest";
pub(crate) const READ_BACK_AUDIT: &str = "SELECT key, event FROM audit ORDER BY key";
pub(crate) const READ_BACK_USAGE: &str =
    "SELECT org_key, int8send(count) FROM usage ORDER BY resolution, minute_us, org_key";
pub(crate) const READ_BACK_LAST_USED: &str =
    "SELECT token_id, int8send(at_us) FROM last_used ORDER BY token_id";
pub(crate) const READ_BACK_CLIENT_ADDRESSES: &str =
    "SELECT token_id, entries FROM client_addresses ORDER BY token_id";
pub(crate) const READ_BACK_PEPPER_CHECKS: &str = "SELECT substring(int8send(key_id) FROM 5), check_value FROM pepper_checks \
         ORDER BY key_id";
pub(crate) const READ_BACK_MEMBERS: &str = "SELECT key, member FROM members ORDER BY key";
pub(crate) const CLOCK_FOR_SHARE: &str = "SELECT seq FROM revocation_clock FOR SHARE";
pub(crate) const COPY_TOKENS: &str = "INSERT INTO tokens (id, record, org_id, workspace_id, owner_user_id, kind, \
                 expires_at_us, revoked_at_us) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::text[], \
                 $5::text[], $6::int2[], $7::int8[], $8::int8[]) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, \
                 org_id = EXCLUDED.org_id, workspace_id = EXCLUDED.workspace_id, \
                 owner_user_id = EXCLUDED.owner_user_id, kind = EXCLUDED.kind, \
                 expires_at_us = EXCLUDED.expires_at_us, revoked_at_us = EXCLUDED.revoked_at_us \
                 WHERE ROW(tokens.*) IS DISTINCT FROM ROW(EXCLUDED.*)";
pub(crate) const COPY_DIGESTS: &str = "INSERT INTO digests (digest, token_id) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (digest) DO UPDATE SET token_id = EXCLUDED.token_id \
                 WHERE digests.token_id <> EXCLUDED.token_id";
pub(crate) const COPY_AUDIT: &str = "INSERT INTO audit (key, event, id) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET event = EXCLUDED.event, id = EXCLUDED.id \
                 WHERE ROW(audit.*) IS DISTINCT FROM ROW(EXCLUDED.*)";
pub(crate) const COPY_USAGE: &str = "INSERT INTO usage (org_key, token_key, minute_us, count, resolution) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], $5::int2[]) \
                 ON CONFLICT (org_key) DO UPDATE SET token_key = EXCLUDED.token_key, \
                 minute_us = EXCLUDED.minute_us, count = EXCLUDED.count, \
                 resolution = EXCLUDED.resolution \
                 WHERE ROW(usage.*) IS DISTINCT FROM ROW(EXCLUDED.*)";
pub(crate) const COPY_LAST_USED: &str = "INSERT INTO last_used (token_id, at_us) \
                 SELECT * FROM unnest($1::bytea[], $2::int8[]) \
                 ON CONFLICT (token_id) DO UPDATE SET at_us = EXCLUDED.at_us \
                 WHERE last_used.at_us <> EXCLUDED.at_us";
pub(crate) const COPY_CLIENT_ADDRESSES: &str = "INSERT INTO client_addresses (token_id, entries) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (token_id) DO UPDATE SET entries = EXCLUDED.entries \
                 WHERE client_addresses.entries <> EXCLUDED.entries";
pub(crate) const COPY_PEPPER_CHECKS: &str = "INSERT INTO pepper_checks (key_id, check_value) \
                 SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                 ON CONFLICT (key_id) DO UPDATE SET check_value = EXCLUDED.check_value \
                 WHERE pepper_checks.check_value <> EXCLUDED.check_value";
pub(crate) const COPY_MEMBERS: &str = "INSERT INTO members (key, member, org_id, user_id) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::text[]) \
                 ON CONFLICT (key) DO UPDATE SET member = EXCLUDED.member, \
                 org_id = EXCLUDED.org_id, user_id = EXCLUDED.user_id \
                 WHERE ROW(members.*) IS DISTINCT FROM ROW(EXCLUDED.*)";
