-- coupond schema for PostgreSQL. Timestamps are timestamptz (microseconds).

CREATE TABLE coupon_batches (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT        NOT NULL,
    discount_type  TEXT        NOT NULL CHECK (discount_type IN ('fixed', 'percent')),
    amount         BIGINT,
    percent        BIGINT      CHECK (percent BETWEEN 1 AND 100),
    per_user_limit BIGINT      NOT NULL CHECK (per_user_limit >= 1),
    total_limit    BIGINT      NOT NULL CHECK (total_limit >= 1),
    expires_at     TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);

-- A batch's capacity, split over a few rows: concurrent issues of one batch each lock
-- one shard instead of queueing on a single counter row until its commit is flushed.
CREATE TABLE batch_counter_shards (
    batch_id BIGINT NOT NULL REFERENCES coupon_batches (id),
    shard    INTEGER NOT NULL,
    quota    BIGINT  NOT NULL,
    issued   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, shard),
    CHECK (issued BETWEEN 0 AND quota)
);

-- Coupons per (batch, user): the per-user limit without counting coupon rows.
CREATE TABLE user_batch_counters (
    batch_id BIGINT NOT NULL,
    user_id  TEXT   NOT NULL,
    issued   BIGINT NOT NULL CHECK (issued >= 0),
    PRIMARY KEY (batch_id, user_id)
);

CREATE TABLE coupons (
    id          BIGSERIAL PRIMARY KEY,
    batch_id    BIGINT      NOT NULL REFERENCES coupon_batches (id),
    code        TEXT        NOT NULL UNIQUE,
    status      TEXT        NOT NULL CHECK (status IN ('issued', 'redeemed', 'cancelled', 'expired')),
    issued_to   TEXT,
    issued_at   TIMESTAMPTZ,
    redeemed_by TEXT,
    redeemed_at TIMESTAMPTZ,
    order_id    TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX coupons_batch ON coupons (batch_id, id);
CREATE INDEX coupons_issued_to ON coupons (issued_to, id DESC);
CREATE INDEX coupons_redeemed_by ON coupons (redeemed_by, id DESC) WHERE redeemed_by IS NOT NULL;
CREATE INDEX coupons_status ON coupons (status, id DESC);

-- One row per (caller scope, Idempotency-Key). A row is inserted when a request claims
-- its key and is committed together with the request's effect and response, so a
-- committed row always holds a response; an uncommitted one is a request in flight,
-- and duplicates wait on its lock.
CREATE TABLE idempotency_records (
    scope           TEXT        NOT NULL,
    key             TEXT        NOT NULL,
    fingerprint     TEXT        NOT NULL,
    response_status SMALLINT,
    response_body   BYTEA,
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_records_expires_at ON idempotency_records (expires_at);
