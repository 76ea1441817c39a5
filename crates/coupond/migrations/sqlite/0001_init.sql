-- coupond schema for SQLite. Timestamps are INTEGER microseconds since the Unix epoch.
-- One writer at a time (coupond's writer task), so counters live on plain rows.

CREATE TABLE coupon_batches (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL,
    discount_type  TEXT    NOT NULL CHECK (discount_type IN ('fixed', 'percent')),
    amount         INTEGER,
    percent        INTEGER CHECK (percent BETWEEN 1 AND 100),
    per_user_limit INTEGER NOT NULL CHECK (per_user_limit >= 1),
    total_limit    INTEGER NOT NULL CHECK (total_limit >= 1),
    issued         INTEGER NOT NULL DEFAULT 0,
    expires_at     INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    CHECK (issued BETWEEN 0 AND total_limit)
);

-- Coupons per (batch, user): the per-user limit without counting coupon rows.
CREATE TABLE user_batch_counters (
    batch_id INTEGER NOT NULL,
    user_id  TEXT    NOT NULL,
    issued   INTEGER NOT NULL CHECK (issued >= 0),
    PRIMARY KEY (batch_id, user_id)
) WITHOUT ROWID;

CREATE TABLE coupons (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id    INTEGER NOT NULL REFERENCES coupon_batches (id),
    code        TEXT    NOT NULL UNIQUE,
    status      TEXT    NOT NULL CHECK (status IN ('issued', 'redeemed', 'cancelled', 'expired')),
    issued_to   TEXT,
    issued_at   INTEGER,
    redeemed_by TEXT,
    redeemed_at INTEGER,
    order_id    TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX coupons_batch ON coupons (batch_id, id);
CREATE INDEX coupons_issued_to ON coupons (issued_to, id DESC);
CREATE INDEX coupons_redeemed_by ON coupons (redeemed_by, id DESC) WHERE redeemed_by IS NOT NULL;
CREATE INDEX coupons_status ON coupons (status, id DESC);

CREATE TABLE idempotency_records (
    scope           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_records_expires_at ON idempotency_records (expires_at);
