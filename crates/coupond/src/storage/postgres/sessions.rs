//! The admin console on PostgreSQL: its sessions, the key creation it makes exactly
//! once, and the reads only its pages need.

use sqlx::{Acquire, FromRow, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::rows::{BATCH_COLUMNS, BATCH_STATS};
use super::{is_lock_timeout, PgStore};
use crate::domain::{ApiKey, Batch, BatchStats, EventKind, NewApiKey};
use crate::storage::{
    key_record_body, newest_activity, ActivityEntry, ActivityKind, ActivityWindow,
    AdminBatchFilter, AdminSession, BatchState, BucketCounts, IdempotencyClaim, KeyCreation,
    NewAdminSession, StoreError,
};

const SESSION_COLUMNS: &str = "s.id, s.api_key_id, k.name AS key_name, s.csrf_token, \
    s.created_at, s.expires_at, s.last_seen_at";

#[derive(FromRow)]
struct SessionRow {
    id: i64,
    api_key_id: i64,
    key_name: String,
    csrf_token: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
}

impl From<SessionRow> for AdminSession {
    fn from(row: SessionRow) -> AdminSession {
        AdminSession {
            id: row.id,
            api_key_id: row.api_key_id,
            key_name: row.key_name,
            csrf_token: row.csrf_token,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_seen_at: row.last_seen_at,
        }
    }
}

#[derive(FromRow)]
struct ActivityRow {
    kind: String,
    at: OffsetDateTime,
    batch_id: i64,
    batch_name: String,
    code: Option<String>,
    user_id: Option<String>,
    order_id: Option<String>,
    reason: Option<String>,
    api_key_id: Option<i64>,
}

impl From<ActivityRow> for ActivityEntry {
    fn from(row: ActivityRow) -> ActivityEntry {
        let kind = if row.kind == "batch_created" {
            ActivityKind::BatchCreated
        } else {
            // The CHECK constraint admits only the kinds that are stored.
            ActivityKind::Coupon(EventKind::parse(&row.kind).unwrap_or(EventKind::Redeemed))
        };
        ActivityEntry {
            at: row.at,
            kind,
            batch_id: row.batch_id,
            batch_name: row.batch_name,
            code: row.code,
            user_id: row.user_id,
            order_id: row.order_id,
            reason: row.reason,
            api_key_id: row.api_key_id,
        }
    }
}

impl PgStore {
    pub async fn create_admin_session(&self, session: NewAdminSession) -> Result<i64, StoreError> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO admin_sessions (token_hash, api_key_id, csrf_token, created_at, \
                 expires_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $4) RETURNING id",
        )
        .bind(session.token_hash.as_slice())
        .bind(session.api_key_id)
        .bind(&session.csrf_token)
        .bind(session.created_at)
        .bind(session.expires_at)
        .fetch_one(&mut *self.acquire().await?)
        .await?;
        Ok(id)
    }

    pub async fn find_admin_session(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Option<AdminSession>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(&format!(
            "SELECT {SESSION_COLUMNS} FROM admin_sessions s \
             JOIN api_keys k ON k.id = s.api_key_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2 \
               AND k.revoked_at IS NULL AND k.scope = 'admin'"
        ))
        .bind(token_hash.as_slice())
        .bind(now)
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(row.map(AdminSession::from))
    }

    pub async fn touch_admin_session(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE admin_sessions SET last_seen_at = GREATEST(last_seen_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }

    pub async fn delete_admin_session(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE id = $1")
            .bind(id)
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(())
    }

    pub async fn end_admin_sessions_of_key(&self, api_key_id: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM admin_sessions WHERE api_key_id = $1")
            .bind(api_key_id)
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn purge_admin_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn admin_list_batches(
        &self,
        filter: &AdminBatchFilter,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {BATCH_COLUMNS}, {BATCH_STATS} FROM coupon_batches b WHERE TRUE"
        ));
        match filter.state {
            None => {}
            Some(BatchState::Active) => {
                query
                    .push(" AND b.active AND b.expires_at > ")
                    .push_bind(filter.now);
            }
            Some(BatchState::Inactive) => {
                query.push(" AND NOT b.active");
            }
            Some(BatchState::Expired) => {
                query.push(" AND b.expires_at <= ").push_bind(filter.now);
            }
        }
        self.batch_page(query, filter.name.as_deref(), filter.page)
            .await
    }

    pub async fn batch_activity(
        &self,
        batch_id: i64,
        window: ActivityWindow,
    ) -> Result<BucketCounts, StoreError> {
        let mut conn = self.acquire().await?;
        // One round trip; per bucket, two counts over one range each of the partial
        // indexes (batch, time), read by index-only scans. (A GROUP BY over the whole
        // range would aggregate every entry of it, several times slower.)
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT \
                 (SELECT COUNT(*) FROM coupons c WHERE c.batch_id = $1 \
                     AND c.issued_at IS NOT NULL \
                     AND c.issued_at >= $2 + (g.i * $3)::DOUBLE PRECISION * INTERVAL '1 second' \
                     AND c.issued_at < $2 + ((g.i + 1) * $3)::DOUBLE PRECISION * INTERVAL '1 second' \
                 )::BIGINT, \
                 (SELECT COUNT(*) FROM coupons c WHERE c.batch_id = $1 \
                     AND c.redeemed_at IS NOT NULL \
                     AND c.redeemed_at >= $2 + (g.i * $3)::DOUBLE PRECISION * INTERVAL '1 second' \
                     AND c.redeemed_at < $2 + ((g.i + 1) * $3)::DOUBLE PRECISION * INTERVAL '1 second' \
                 )::BIGINT \
             FROM generate_series(0::BIGINT, $4::BIGINT - 1) AS g(i) ORDER BY g.i",
        )
        .bind(batch_id)
        .bind(window.from)
        .bind(window.bucket_secs.max(1))
        .bind(window.buckets.max(0))
        .fetch_all(&mut *conn)
        .await?;
        let (issued, redeemed) = rows.into_iter().unzip();
        Ok(BucketCounts { issued, redeemed })
    }

    pub async fn recent_activity(&self, limit: i64) -> Result<Vec<ActivityEntry>, StoreError> {
        let mut conn = self.acquire().await?;
        // Three short walks down primary keys, merged by time.
        let rows: Vec<ActivityRow> = sqlx::query_as(
            "(SELECT 'batch_created' AS kind, b.created_at AS at, b.id AS batch_id, \
                     b.name AS batch_name, NULL::TEXT AS code, NULL::TEXT AS user_id, \
                     NULL::TEXT AS order_id, NULL::TEXT AS reason, NULL::BIGINT AS api_key_id \
                FROM coupon_batches b ORDER BY b.id DESC LIMIT $1) \
             UNION ALL \
             (SELECT CASE WHEN c.issued_to IS NULL THEN 'generated' ELSE 'issued' END, \
                     c.created_at, c.batch_id, b.name, c.code, c.issued_to, NULL, NULL, \
                     c.created_by \
                FROM (SELECT * FROM coupons ORDER BY id DESC LIMIT $1) c \
                JOIN coupon_batches b ON b.id = c.batch_id) \
             UNION ALL \
             (SELECT e.kind, e.at, c.batch_id, b.name, c.code, e.user_id, e.order_id, \
                     e.reason, e.api_key_id \
                FROM (SELECT * FROM coupon_events ORDER BY id DESC LIMIT $1) e \
                JOIN coupons c ON c.id = e.coupon_id \
                JOIN coupon_batches b ON b.id = c.batch_id)",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        Ok(newest_activity(
            rows.into_iter().map(ActivityEntry::from).collect(),
            usize::try_from(limit).unwrap_or(0),
        ))
    }

    /// The claim is `coupond_claim_key`'s, as for every other write: a second request
    /// with the key waits for the first's transaction, then sees its record.
    pub async fn create_api_key_once(
        &self,
        claim: IdempotencyClaim,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<KeyCreation, StoreError> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let claimed: Result<(bool,), sqlx::Error> =
            sqlx::query_as("SELECT coupond_claim_key($1, $2, $3, $4, $5)")
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.fingerprint)
                .bind(now)
                .bind(claim.expires_at)
                .fetch_one(&mut *tx)
                .await;
        let claimed = match claimed {
            Ok((claimed,)) => claimed,
            Err(e) if is_lock_timeout(&e) => return Ok(KeyCreation::InProgress),
            Err(e) => return Err(e.into()),
        };
        if !claimed {
            return Ok(
                match super::stored_record(&mut tx, &claim.scope, &claim.key).await? {
                    Some(record) if record.fingerprint == claim.fingerprint => {
                        KeyCreation::Replayed(record)
                    }
                    Some(_) => KeyCreation::Mismatch,
                    None => KeyCreation::InProgress,
                },
            );
        }
        let (id, created_at): (i64, OffsetDateTime) = sqlx::query_as(
            "INSERT INTO api_keys (name, scope, key_hash, key_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at",
        )
        .bind(&key.name)
        .bind(key.scope.as_str())
        .bind(key.hash.as_slice())
        .bind(&key.prefix)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let created = ApiKey {
            id,
            name: key.name.clone(),
            scope: key.scope,
            prefix: key.prefix.clone(),
            created_at,
            last_used_at: None,
            revoked_at: None,
        };
        sqlx::query(
            "UPDATE idempotency_records SET response_status = 201, response_body = $3 \
             WHERE scope = $1 AND key = $2",
        )
        .bind(&claim.scope)
        .bind(&claim.key)
        .bind(key_record_body(&created))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(KeyCreation::Created(created))
    }
}
