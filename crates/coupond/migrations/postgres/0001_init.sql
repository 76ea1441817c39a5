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

-- The hot writes, one round trip each. The caller (coupond) has already rendered the
-- response for every outcome the command can have (`p_outcomes`, `p_statuses`,
-- `p_bodies` are parallel arrays); the function claims the idempotency key, applies
-- the rules under row locks, writes the effect, and stores the response of the outcome
-- it reached, all in the one transaction of the statement that calls it.
--
-- It answers `(outcome, fingerprint, response_status, response_body)`: the outcome it
-- reached, or 'DUPLICATE' with the record another request committed under this key.

-- Claims (p_scope, p_key) for this transaction: true if the key is free or its record
-- has expired; false if a live record exists. A request in flight with the same key
-- holds the row's lock, so this waits for it, but only as long as the setting
-- `coupond.claim_wait` (coupond sets it per connection); every other lock a write
-- takes waits as long as the connection's own lock_timeout.
CREATE FUNCTION coupond_claim_key(
    p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_now TIMESTAMPTZ, p_expires_at TIMESTAMPTZ
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    claimed INTEGER;
    v_lock_timeout TEXT := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout',
                       COALESCE(current_setting('coupond.claim_wait', true), v_lock_timeout),
                       true);
    INSERT INTO idempotency_records AS r (scope, key, fingerprint, created_at, expires_at)
    VALUES (p_scope, p_key, p_fingerprint, p_now, p_expires_at)
    ON CONFLICT (scope, key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, response_status = NULL, response_body = NULL,
            created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
        WHERE r.expires_at <= EXCLUDED.created_at;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
    RETURN claimed = 1;
END $$;

-- Stores the response of `p_outcome` on the claimed record.
CREATE FUNCTION coupond_store_response(
    p_scope TEXT, p_key TEXT, p_outcome TEXT,
    p_outcomes TEXT[], p_statuses SMALLINT[], p_bodies BYTEA[]
) RETURNS TABLE (outcome TEXT, fingerprint TEXT, response_status SMALLINT, response_body BYTEA)
LANGUAGE plpgsql AS $$
DECLARE
    i INTEGER := array_position(p_outcomes, p_outcome);
BEGIN
    IF i IS NULL OR p_bodies[i] IS NULL THEN
        -- The caller did not foresee this outcome (its snapshot was stale): undo
        -- everything so that it can look again and retry.
        RAISE EXCEPTION 'coupond: no response rendered for outcome %', p_outcome
            USING ERRCODE = 'CPD01';
    END IF;
    UPDATE idempotency_records r
       SET response_status = p_statuses[i], response_body = p_bodies[i]
     WHERE r.scope = p_scope AND r.key = p_key;
    -- The caller rendered the response itself; sending it back would only cost bytes.
    RETURN QUERY SELECT p_outcome, NULL::TEXT, NULL::SMALLINT, NULL::BYTEA;
END $$;

-- The record that a request with the same key committed first.
CREATE FUNCTION coupond_duplicate(p_scope TEXT, p_key TEXT)
RETURNS TABLE (outcome TEXT, fingerprint TEXT, response_status SMALLINT, response_body BYTEA)
LANGUAGE sql AS $$
    SELECT 'DUPLICATE'::TEXT, r.fingerprint, r.response_status, r.response_body
      FROM idempotency_records r WHERE r.scope = p_scope AND r.key = p_key
$$;

-- Issue one coupon, with the id and code the caller chose. Rules in the seed's order:
-- BATCH_NOT_FOUND, BATCH_EXPIRED, PER_USER_LIMIT_REACHED, BATCH_LIMIT_REACHED.
CREATE FUNCTION coupond_issue(
    p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_now TIMESTAMPTZ, p_expires_at TIMESTAMPTZ,
    p_batch_id BIGINT, p_user_id TEXT, p_coupon_id BIGINT, p_code TEXT, p_start_shard INTEGER,
    p_outcomes TEXT[], p_statuses SMALLINT[], p_bodies BYTEA[]
) RETURNS TABLE (outcome TEXT, fingerprint TEXT, response_status SMALLINT, response_body BYTEA)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch coupon_batches%ROWTYPE;
    v_held BIGINT;
    v_shard INTEGER;
    v_outcome TEXT;
BEGIN
    IF NOT coupond_claim_key(p_scope, p_key, p_fingerprint, p_now, p_expires_at) THEN
        RETURN QUERY SELECT * FROM coupond_duplicate(p_scope, p_key);
        RETURN;
    END IF;

    SELECT * INTO v_batch FROM coupon_batches b WHERE b.id = p_batch_id;
    IF NOT FOUND THEN
        v_outcome := 'BATCH_NOT_FOUND';
    ELSIF v_batch.expires_at <= p_now THEN
        v_outcome := 'BATCH_EXPIRED';
    ELSE
        -- One user's concurrent issues queue on their counter row; other users never
        -- touch it.
        INSERT INTO user_batch_counters AS u (batch_id, user_id, issued)
        VALUES (p_batch_id, p_user_id, 1)
        ON CONFLICT (batch_id, user_id) DO UPDATE SET issued = u.issued + 1
            WHERE u.issued < v_batch.per_user_limit
        RETURNING u.issued INTO v_held;
        IF v_held IS NULL THEN
            v_outcome := 'PER_USER_LIMIT_REACHED';
        ELSE
            -- A unit of capacity from any shard nobody else holds right now, starting
            -- at a random one; only when every shard with room is held do we wait,
            -- since a holder may yet roll back and leave room.
            UPDATE batch_counter_shards s SET issued = s.issued + 1
             WHERE s.batch_id = p_batch_id AND s.shard = (
                   SELECT x.shard FROM batch_counter_shards x
                    WHERE x.batch_id = p_batch_id AND x.issued < x.quota
                    ORDER BY x.shard >= p_start_shard DESC, x.shard LIMIT 1
                    FOR UPDATE SKIP LOCKED)
            RETURNING s.shard INTO v_shard;
            IF v_shard IS NULL THEN
                -- Waiting, so in one fixed order: a row locked here stays locked even
                -- when it turns out full, and two waiters taking rows in different
                -- orders would deadlock.
                UPDATE batch_counter_shards s SET issued = s.issued + 1
                 WHERE s.batch_id = p_batch_id AND s.shard = (
                       SELECT x.shard FROM batch_counter_shards x
                        WHERE x.batch_id = p_batch_id AND x.issued < x.quota
                        ORDER BY x.shard LIMIT 1
                        FOR UPDATE)
                RETURNING s.shard INTO v_shard;
            END IF;
            IF v_shard IS NULL THEN
                UPDATE user_batch_counters u SET issued = u.issued - 1
                 WHERE u.batch_id = p_batch_id AND u.user_id = p_user_id;
                v_outcome := 'BATCH_LIMIT_REACHED';
            ELSE
                -- A code collision raises unique_violation, which undoes the whole
                -- statement; the caller retries with a fresh code.
                INSERT INTO coupons (id, batch_id, code, status, issued_to, issued_at,
                                     created_at, updated_at)
                VALUES (p_coupon_id, p_batch_id, p_code, 'issued', p_user_id, p_now,
                        p_now, p_now);
                v_outcome := 'ISSUED';
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM coupond_store_response(
        p_scope, p_key, v_outcome, p_outcomes, p_statuses, p_bodies);
END $$;

-- Redeem a coupon by code. Rules in the seed's order: COUPON_NOT_FOUND, COUPON_EXPIRED,
-- COUPON_ALREADY_REDEEMED.
CREATE FUNCTION coupond_redeem(
    p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_now TIMESTAMPTZ, p_expires_at TIMESTAMPTZ,
    p_code TEXT, p_user_id TEXT, p_order_id TEXT,
    p_outcomes TEXT[], p_statuses SMALLINT[], p_bodies BYTEA[]
) RETURNS TABLE (outcome TEXT, fingerprint TEXT, response_status SMALLINT, response_body BYTEA)
LANGUAGE plpgsql AS $$
DECLARE
    v_coupon_id BIGINT;
    v_status TEXT;
    v_batch_expires TIMESTAMPTZ;
    v_outcome TEXT;
BEGIN
    IF NOT coupond_claim_key(p_scope, p_key, p_fingerprint, p_now, p_expires_at) THEN
        RETURN QUERY SELECT * FROM coupond_duplicate(p_scope, p_key);
        RETURN;
    END IF;

    SELECT c.id, c.status, b.expires_at INTO v_coupon_id, v_status, v_batch_expires
      FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id
     WHERE c.code = p_code
       FOR UPDATE OF c;
    IF NOT FOUND THEN
        v_outcome := 'COUPON_NOT_FOUND';
    ELSIF v_batch_expires <= p_now OR v_status = 'expired' THEN
        v_outcome := 'COUPON_EXPIRED';
    ELSIF v_status = 'redeemed' THEN
        v_outcome := 'COUPON_ALREADY_REDEEMED';
    ELSE
        UPDATE coupons SET status = 'redeemed', redeemed_by = p_user_id, redeemed_at = p_now,
                           order_id = p_order_id, updated_at = p_now
         WHERE id = v_coupon_id;
        v_outcome := 'REDEEMED';
    END IF;
    RETURN QUERY SELECT * FROM coupond_store_response(
        p_scope, p_key, v_outcome, p_outcomes, p_statuses, p_bodies);
END $$;
