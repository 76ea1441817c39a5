-- The coupon lifecycle: batch settings, activation, code formats, counters for the
-- batch's stats, what a redemption recorded, the history of changes, bulk-code jobs.

ALTER TABLE coupon_batches
    ADD COLUMN starts_at        TIMESTAMPTZ,
    ADD COLUMN min_order_amount BIGINT CHECK (min_order_amount >= 0),
    ADD COLUMN max_discount     BIGINT CHECK (max_discount >= 1),
    ADD COLUMN currency         TEXT,
    ADD COLUMN active           BOOLEAN NOT NULL DEFAULT TRUE,
    ADD COLUMN code_length      INTEGER NOT NULL DEFAULT 10,
    ADD COLUMN code_prefix      TEXT    NOT NULL DEFAULT '',
    ADD COLUMN code_alphabet    TEXT    NOT NULL DEFAULT 'standard'
        CHECK (code_alphabet IN ('standard', 'unambiguous'));

ALTER TABLE coupons
    ADD COLUMN order_amount    BIGINT,
    ADD COLUMN discount_amount BIGINT,
    -- The API key that issued (or generated) the coupon: the first line of its history.
    ADD COLUMN created_by      BIGINT;

-- Redeemed and cancelled counts of a batch, spread like its capacity so that no single
-- row is hot: a change counts on the row of its coupon's id. A row's count may go below
-- zero (a coupon redeemed, then given back on another row's share); the sums are exact.
CREATE TABLE batch_status_counters (
    batch_id  BIGINT  NOT NULL REFERENCES coupon_batches (id),
    shard     INTEGER NOT NULL,
    redeemed  BIGINT  NOT NULL DEFAULT 0,
    cancelled BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, shard)
);

-- Every change after a coupon's creation; append-only.
CREATE TABLE coupon_events (
    id         BIGSERIAL   PRIMARY KEY,
    coupon_id  BIGINT      NOT NULL REFERENCES coupons (id),
    kind       TEXT        NOT NULL CHECK (kind IN ('redeemed', 'unredeemed', 'cancelled')),
    at         TIMESTAMPTZ NOT NULL,
    api_key_id BIGINT,
    user_id    TEXT,
    order_id   TEXT,
    reason     TEXT
);
CREATE INDEX coupon_events_coupon ON coupon_events (coupon_id, id);

CREATE TABLE code_jobs (
    id          BIGSERIAL   PRIMARY KEY,
    batch_id    BIGINT      NOT NULL REFERENCES coupon_batches (id),
    requested   BIGINT      NOT NULL CHECK (requested >= 1),
    generated   BIGINT      NOT NULL DEFAULT 0,
    status      TEXT        NOT NULL CHECK (status IN ('running', 'done')),
    created_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    api_key_id  BIGINT,
    CHECK (generated BETWEEN 0 AND requested)
);
CREATE INDEX code_jobs_running ON code_jobs (id) WHERE status = 'running';

CREATE INDEX coupons_issued_to_status ON coupons (issued_to, status, id);
CREATE INDEX coupons_redeemed_by_status ON coupons (redeemed_by, status, id)
    WHERE redeemed_by IS NOT NULL;
CREATE INDEX coupons_batch_status ON coupons (batch_id, status, id);
DROP INDEX coupons_issued_to;
DROP INDEX coupons_redeemed_by;

-- Adds `by` to a batch's redeemed or cancelled count, on the row of `p_coupon_id`.
CREATE FUNCTION coupond_count_status(
    p_batch_id BIGINT, p_coupon_id BIGINT, p_redeemed BIGINT, p_cancelled BIGINT
) RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO batch_status_counters AS s (batch_id, shard, redeemed, cancelled)
    VALUES (p_batch_id, (p_coupon_id % 16)::INTEGER, p_redeemed, p_cancelled)
    ON CONFLICT (batch_id, shard) DO UPDATE
        SET redeemed = s.redeemed + EXCLUDED.redeemed,
            cancelled = s.cancelled + EXCLUDED.cancelled
$$;

-- Takes `p_count` units of a batch's capacity at once (for bulk codes), or none.
CREATE FUNCTION coupond_reserve(p_batch_id BIGINT, p_count BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_left BIGINT := p_count;
    v_shard RECORD;
    v_take BIGINT;
BEGIN
    -- Every shard, in the one order every waiter uses (see coupond_issue).
    PERFORM 1 FROM batch_counter_shards WHERE batch_id = p_batch_id ORDER BY shard FOR UPDATE;
    IF (SELECT COALESCE(SUM(quota - issued), 0) FROM batch_counter_shards
         WHERE batch_id = p_batch_id) < p_count THEN
        RETURN FALSE;
    END IF;
    FOR v_shard IN SELECT shard, quota - issued AS room FROM batch_counter_shards
                    WHERE batch_id = p_batch_id AND issued < quota ORDER BY shard LOOP
        EXIT WHEN v_left = 0;
        v_take := LEAST(v_left, v_shard.room);
        UPDATE batch_counter_shards SET issued = issued + v_take
         WHERE batch_id = p_batch_id AND shard = v_shard.shard;
        v_left := v_left - v_take;
    END LOOP;
    RETURN TRUE;
END $$;

-- Issue, now with inactive and not-yet-started batches and the creating key. Rules:
-- BATCH_NOT_FOUND, BATCH_INACTIVE, BATCH_NOT_STARTED, BATCH_EXPIRED,
-- PER_USER_LIMIT_REACHED, BATCH_LIMIT_REACHED (domain::batch::decide_issue).
DROP FUNCTION coupond_issue(TEXT, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, BIGINT, TEXT, BIGINT,
                            TEXT, INTEGER, TEXT[], SMALLINT[], BYTEA[]);
CREATE FUNCTION coupond_issue(
    p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_now TIMESTAMPTZ, p_expires_at TIMESTAMPTZ,
    p_batch_id BIGINT, p_user_id TEXT, p_coupon_id BIGINT, p_code TEXT, p_start_shard INTEGER,
    p_actor BIGINT, p_outcomes TEXT[], p_statuses SMALLINT[], p_bodies BYTEA[]
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
    ELSIF NOT v_batch.active THEN
        v_outcome := 'BATCH_INACTIVE';
    ELSIF v_batch.starts_at IS NOT NULL AND v_batch.starts_at > p_now THEN
        v_outcome := 'BATCH_NOT_STARTED';
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
                                     created_at, updated_at, created_by)
                VALUES (p_coupon_id, p_batch_id, p_code, 'issued', p_user_id, p_now,
                        p_now, p_now, p_actor);
                v_outcome := 'ISSUED';
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM coupond_store_response(
        p_scope, p_key, v_outcome, p_outcomes, p_statuses, p_bodies);
END $$;

-- Redeem, with the whole rule set of domain::coupon::check_redeemable, in its order:
-- COUPON_NOT_FOUND, BATCH_INACTIVE, BATCH_NOT_STARTED, COUPON_EXPIRED,
-- COUPON_CANCELLED, COUPON_ALREADY_REDEEMED, COUPON_OWNERSHIP_MISMATCH,
-- MIN_ORDER_AMOUNT_NOT_MET. The discount comes from the caller, which computed it from
-- the batch's settings (they never change).
DROP FUNCTION coupond_redeem(TEXT, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, TEXT, TEXT, TEXT,
                             TEXT[], SMALLINT[], BYTEA[]);
CREATE FUNCTION coupond_redeem(
    p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_now TIMESTAMPTZ, p_expires_at TIMESTAMPTZ,
    p_code TEXT, p_user_id TEXT, p_order_id TEXT, p_order_amount BIGINT,
    p_discount_amount BIGINT, p_actor BIGINT,
    p_outcomes TEXT[], p_statuses SMALLINT[], p_bodies BYTEA[]
) RETURNS TABLE (outcome TEXT, fingerprint TEXT, response_status SMALLINT, response_body BYTEA)
LANGUAGE plpgsql AS $$
DECLARE
    v_coupon_id BIGINT;
    v_batch_id BIGINT;
    v_status TEXT;
    v_issued_to TEXT;
    v_batch coupon_batches%ROWTYPE;
    v_outcome TEXT;
BEGIN
    IF NOT coupond_claim_key(p_scope, p_key, p_fingerprint, p_now, p_expires_at) THEN
        RETURN QUERY SELECT * FROM coupond_duplicate(p_scope, p_key);
        RETURN;
    END IF;

    SELECT c.id, c.batch_id, c.status, c.issued_to
      INTO v_coupon_id, v_batch_id, v_status, v_issued_to
      FROM coupons c WHERE c.code = p_code
       FOR UPDATE;
    IF FOUND THEN
        SELECT * INTO v_batch FROM coupon_batches b WHERE b.id = v_batch_id;
    END IF;
    IF v_coupon_id IS NULL THEN
        v_outcome := 'COUPON_NOT_FOUND';
    ELSIF NOT v_batch.active THEN
        v_outcome := 'BATCH_INACTIVE';
    ELSIF v_batch.starts_at IS NOT NULL AND v_batch.starts_at > p_now THEN
        v_outcome := 'BATCH_NOT_STARTED';
    ELSIF v_batch.expires_at <= p_now OR v_status = 'expired' THEN
        v_outcome := 'COUPON_EXPIRED';
    ELSIF v_status = 'cancelled' THEN
        v_outcome := 'COUPON_CANCELLED';
    ELSIF v_status = 'redeemed' THEN
        v_outcome := 'COUPON_ALREADY_REDEEMED';
    ELSIF v_batch.redeem_policy = 'owner_only' AND v_issued_to IS NOT NULL
          AND v_issued_to <> p_user_id THEN
        v_outcome := 'COUPON_OWNERSHIP_MISMATCH';
    ELSIF v_batch.min_order_amount > 0
          AND (p_order_amount IS NULL OR p_order_amount < v_batch.min_order_amount) THEN
        v_outcome := 'MIN_ORDER_AMOUNT_NOT_MET';
    ELSE
        UPDATE coupons SET status = 'redeemed', redeemed_by = p_user_id, redeemed_at = p_now,
                           order_id = p_order_id, order_amount = p_order_amount,
                           discount_amount = p_discount_amount, updated_at = p_now
         WHERE id = v_coupon_id;
        PERFORM coupond_count_status(v_batch_id, v_coupon_id, 1, 0);
        INSERT INTO coupon_events (coupon_id, kind, at, api_key_id, user_id, order_id)
        VALUES (v_coupon_id, 'redeemed', p_now, p_actor, p_user_id, p_order_id);
        v_outcome := 'REDEEMED';
    END IF;
    RETURN QUERY SELECT * FROM coupond_store_response(
        p_scope, p_key, v_outcome, p_outcomes, p_statuses, p_bodies);
END $$;
