-- The coupon lifecycle: batch settings, activation, code formats, counters for the
-- batch's stats, what a redemption recorded, the history of changes, bulk-code jobs.

ALTER TABLE coupon_batches ADD COLUMN starts_at INTEGER;
ALTER TABLE coupon_batches ADD COLUMN min_order_amount INTEGER CHECK (min_order_amount >= 0);
ALTER TABLE coupon_batches ADD COLUMN max_discount INTEGER CHECK (max_discount >= 1);
ALTER TABLE coupon_batches ADD COLUMN currency TEXT;
ALTER TABLE coupon_batches ADD COLUMN active INTEGER NOT NULL DEFAULT 1;
ALTER TABLE coupon_batches ADD COLUMN code_length INTEGER NOT NULL DEFAULT 10;
ALTER TABLE coupon_batches ADD COLUMN code_prefix TEXT NOT NULL DEFAULT '';
ALTER TABLE coupon_batches ADD COLUMN code_alphabet TEXT NOT NULL DEFAULT 'standard'
    CHECK (code_alphabet IN ('standard', 'unambiguous'));
-- Kept by the one writer in the same transaction as the change they count.
ALTER TABLE coupon_batches ADD COLUMN redeemed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE coupon_batches ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;

ALTER TABLE coupons ADD COLUMN order_amount INTEGER;
ALTER TABLE coupons ADD COLUMN discount_amount INTEGER;
-- The API key that issued (or generated) the coupon: the first line of its history.
ALTER TABLE coupons ADD COLUMN created_by INTEGER;

-- Every change after a coupon's creation; append-only.
CREATE TABLE coupon_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    coupon_id  INTEGER NOT NULL REFERENCES coupons (id),
    kind       TEXT    NOT NULL CHECK (kind IN ('redeemed', 'unredeemed', 'cancelled')),
    at         INTEGER NOT NULL,
    api_key_id INTEGER,
    user_id    TEXT,
    order_id   TEXT,
    reason     TEXT
);
CREATE INDEX coupon_events_coupon ON coupon_events (coupon_id, id);

CREATE TABLE code_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id    INTEGER NOT NULL REFERENCES coupon_batches (id),
    requested   INTEGER NOT NULL CHECK (requested >= 1),
    generated   INTEGER NOT NULL DEFAULT 0,
    status      TEXT    NOT NULL CHECK (status IN ('running', 'done')),
    created_at  INTEGER NOT NULL,
    finished_at INTEGER,
    api_key_id  INTEGER,
    CHECK (generated BETWEEN 0 AND requested)
);
CREATE INDEX code_jobs_running ON code_jobs (id) WHERE status = 'running';

-- Listing by user with a status: walk the user's coupons in id order.
CREATE INDEX coupons_issued_to_status ON coupons (issued_to, status, id);
CREATE INDEX coupons_redeemed_by_status ON coupons (redeemed_by, status, id)
    WHERE redeemed_by IS NOT NULL;
CREATE INDEX coupons_batch_status ON coupons (batch_id, status, id);
DROP INDEX coupons_issued_to;
DROP INDEX coupons_redeemed_by;
