-- Issue without a deadlock at sell-out: the same function as in 0003, except that the
-- try for a free shard runs in a subtransaction that is undone when it finds none (see
-- the comment in the body).
CREATE OR REPLACE FUNCTION coupond_issue(
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
            --
            -- The try runs in a subtransaction that is rolled back when it finds
            -- nothing. A shard that filled up after this statement's snapshot is locked
            -- by the scan before its recheck fails, and PostgreSQL keeps that lock; a
            -- transaction going on to wait while holding such locks, out of the waiting
            -- order, deadlocked with the waiters (a 1 s stall, then an error). Rolling
            -- back releases them.
            BEGIN
                UPDATE batch_counter_shards s SET issued = s.issued + 1
                 WHERE s.batch_id = p_batch_id AND s.shard = (
                       SELECT x.shard FROM batch_counter_shards x
                        WHERE x.batch_id = p_batch_id AND x.issued < x.quota
                        ORDER BY x.shard >= p_start_shard DESC, x.shard LIMIT 1
                        FOR UPDATE SKIP LOCKED)
                RETURNING s.shard INTO v_shard;
                IF v_shard IS NULL THEN
                    RAISE EXCEPTION USING ERRCODE = 'CPD02';
                END IF;
            EXCEPTION WHEN SQLSTATE 'CPD02' THEN
                v_shard := NULL;
            END;
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
