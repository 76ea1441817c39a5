-- API keys: only a SHA-256 of each key is kept, looked up by that hash.
CREATE TABLE api_keys (
    id           BIGSERIAL   PRIMARY KEY,
    name         TEXT        NOT NULL,
    scope        TEXT        NOT NULL CHECK (scope IN ('admin', 'service', 'read')),
    key_hash     BYTEA       NOT NULL UNIQUE,
    key_prefix   TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

-- Who may redeem a batch's coupons: anyone holding the code (the seed), or only the
-- user it was issued to.
ALTER TABLE coupon_batches ADD COLUMN redeem_policy TEXT NOT NULL DEFAULT 'anyone'
    CHECK (redeem_policy IN ('anyone', 'owner_only'));

-- Redeem, now with the owner-only policy. Rules in the seed's order: COUPON_NOT_FOUND,
-- COUPON_EXPIRED, COUPON_ALREADY_REDEEMED, then COUPON_OWNERSHIP_MISMATCH (where the
-- seed's commented-out check stands).
CREATE OR REPLACE FUNCTION coupond_redeem(
    p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_now TIMESTAMPTZ, p_expires_at TIMESTAMPTZ,
    p_code TEXT, p_user_id TEXT, p_order_id TEXT,
    p_outcomes TEXT[], p_statuses SMALLINT[], p_bodies BYTEA[]
) RETURNS TABLE (outcome TEXT, fingerprint TEXT, response_status SMALLINT, response_body BYTEA)
LANGUAGE plpgsql AS $$
DECLARE
    v_coupon_id BIGINT;
    v_status TEXT;
    v_issued_to TEXT;
    v_batch_expires TIMESTAMPTZ;
    v_policy TEXT;
    v_outcome TEXT;
BEGIN
    IF NOT coupond_claim_key(p_scope, p_key, p_fingerprint, p_now, p_expires_at) THEN
        RETURN QUERY SELECT * FROM coupond_duplicate(p_scope, p_key);
        RETURN;
    END IF;

    SELECT c.id, c.status, c.issued_to, b.expires_at, b.redeem_policy
      INTO v_coupon_id, v_status, v_issued_to, v_batch_expires, v_policy
      FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id
     WHERE c.code = p_code
       FOR UPDATE OF c;
    IF NOT FOUND THEN
        v_outcome := 'COUPON_NOT_FOUND';
    ELSIF v_batch_expires <= p_now OR v_status = 'expired' THEN
        v_outcome := 'COUPON_EXPIRED';
    ELSIF v_status = 'redeemed' THEN
        v_outcome := 'COUPON_ALREADY_REDEEMED';
    ELSIF v_policy = 'owner_only' AND v_issued_to IS NOT NULL AND v_issued_to <> p_user_id THEN
        v_outcome := 'COUPON_OWNERSHIP_MISMATCH';
    ELSE
        UPDATE coupons SET status = 'redeemed', redeemed_by = p_user_id, redeemed_at = p_now,
                           order_id = p_order_id, updated_at = p_now
         WHERE id = v_coupon_id;
        v_outcome := 'REDEEMED';
    END IF;
    RETURN QUERY SELECT * FROM coupond_store_response(
        p_scope, p_key, v_outcome, p_outcomes, p_statuses, p_bodies);
END $$;
