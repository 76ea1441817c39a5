-- The admin console (/admin/): sessions of operators signed in with an admin API key.
-- Only a SHA-256 of each session token is kept (the cookie holds the token itself);
-- the CSRF token every form carries is kept as it is, since it is not a credential on
-- its own. A session ends at `expires_at`, when it is signed out, or when its API key
-- is revoked.
CREATE TABLE admin_sessions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash   BLOB    NOT NULL UNIQUE,
    api_key_id   INTEGER NOT NULL REFERENCES api_keys (id),
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX admin_sessions_api_key ON admin_sessions (api_key_id);
CREATE INDEX admin_sessions_expires_at ON admin_sessions (expires_at);

-- A batch's issues and redemptions over time (the console's chart), counted from the
-- index alone: one range of it per batch, never the coupon rows.
CREATE INDEX coupons_batch_issued_at ON coupons (batch_id, issued_at)
    WHERE issued_at IS NOT NULL;
CREATE INDEX coupons_batch_redeemed_at ON coupons (batch_id, redeemed_at)
    WHERE redeemed_at IS NOT NULL;
