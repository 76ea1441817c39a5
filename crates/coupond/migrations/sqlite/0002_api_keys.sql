-- API keys: only a SHA-256 of each key is kept, looked up by that hash.
CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    scope        TEXT    NOT NULL CHECK (scope IN ('admin', 'service', 'read')),
    key_hash     BLOB    NOT NULL UNIQUE,
    key_prefix   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

-- Who may redeem a batch's coupons: anyone holding the code (the seed), or only the
-- user it was issued to.
ALTER TABLE coupon_batches ADD COLUMN redeem_policy TEXT NOT NULL DEFAULT 'anyone'
    CHECK (redeem_policy IN ('anyone', 'owner_only'));
