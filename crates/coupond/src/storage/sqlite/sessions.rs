//! The admin console on SQLite: its sessions, the key creation it makes exactly once,
//! and the reads only its pages need. Writes on the writer, reads on the pool.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::commands::{batch_from_row, find_record, BATCH_COLUMNS};
use super::SqliteStore;
use crate::domain::{
    from_unix_micros, to_unix_micros, ApiKey, Batch, BatchStats, EventKind, NewApiKey,
};
use crate::storage::{
    key_record_body, newest_activity, ActivityEntry, ActivityKind, ActivityWindow,
    AdminBatchFilter, AdminSession, BatchState, BucketCounts, IdempotencyClaim, KeyCreation,
    NewAdminSession, StoreError,
};

const SESSION_COLUMNS: &str = "s.id, s.api_key_id, k.name, s.csrf_token, s.created_at, \
    s.expires_at, s.last_seen_at";

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AdminSession> {
    Ok(AdminSession {
        id: row.get(0)?,
        api_key_id: row.get(1)?,
        key_name: row.get(2)?,
        csrf_token: row.get(3)?,
        created_at: from_unix_micros(row.get(4)?),
        expires_at: from_unix_micros(row.get(5)?),
        last_seen_at: from_unix_micros(row.get(6)?),
    })
}

fn insert_key(
    conn: &Connection,
    key: &NewApiKey,
    now: OffsetDateTime,
) -> Result<ApiKey, StoreError> {
    let (id, created_at): (i64, i64) = conn
        .prepare_cached(
            "INSERT INTO api_keys (name, scope, key_hash, key_prefix, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id, created_at",
        )?
        .query_row(
            params![
                key.name,
                key.scope.as_str(),
                key.hash.as_slice(),
                key.prefix,
                to_unix_micros(now)
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
    Ok(ApiKey {
        id,
        name: key.name.clone(),
        scope: key.scope,
        prefix: key.prefix.clone(),
        created_at: from_unix_micros(created_at),
        last_used_at: None,
        revoked_at: None,
    })
}

impl SqliteStore {
    pub async fn create_admin_session(&self, session: NewAdminSession) -> Result<i64, StoreError> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "INSERT INTO admin_sessions (token_hash, api_key_id, csrf_token, created_at, \
                         expires_at, last_seen_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?4) RETURNING id",
                )?
                .query_row(
                    params![
                        session.token_hash.as_slice(),
                        session.api_key_id,
                        session.csrf_token,
                        to_unix_micros(session.created_at),
                        to_unix_micros(session.expires_at),
                    ],
                    |row| row.get(0),
                )?)
        })
        .await
    }

    pub async fn find_admin_session(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Option<AdminSession>, StoreError> {
        self.inner.reads.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM admin_sessions s \
                     JOIN api_keys k ON k.id = s.api_key_id \
                     WHERE s.token_hash = ?1 AND s.expires_at > ?2 \
                       AND k.revoked_at IS NULL AND k.scope = 'admin'"
                ))?
                .query_row(
                    params![token_hash.as_slice(), to_unix_micros(now)],
                    session_from_row,
                )
                .optional()?)
        })
    }

    pub async fn touch_admin_session(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE admin_sessions SET last_seen_at = MAX(last_seen_at, ?2) WHERE id = ?1",
            )?
            .execute(params![id, to_unix_micros(now)])?;
            Ok(())
        })
        .await
    }

    pub async fn delete_admin_session(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM admin_sessions WHERE id = ?1")?
                .execute([id])?;
            Ok(())
        })
        .await
    }

    pub async fn end_admin_sessions_of_key(&self, api_key_id: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM admin_sessions WHERE api_key_id = ?1")?
                .execute([api_key_id])?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn purge_admin_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM admin_sessions WHERE expires_at <= ?1")?
                .execute([to_unix_micros(now)])?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn admin_list_batches(
        &self,
        filter: &AdminBatchFilter,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        let mut text = format!("SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE 1");
        let mut values: Vec<Value> = Vec::new();
        let mut and = |clause: &str, value: Value| {
            values.push(value);
            text.push_str(" AND ");
            text.push_str(&clause.replace('?', &format!("?{}", values.len())));
        };
        let now = Value::Integer(to_unix_micros(filter.now));
        match filter.state {
            None => {}
            Some(BatchState::Active) => and("active = 1 AND expires_at > ?", now),
            Some(BatchState::Inactive) => and("active = ?", Value::Integer(0)),
            Some(BatchState::Expired) => and("expires_at <= ?", now),
        }
        if let Some(name) = &filter.name {
            and(
                "name LIKE ? ESCAPE '\\'",
                Value::Text(format!("%{}%", crate::storage::escape_like(name))),
            );
        }
        if let Some(after_id) = filter.page.after_id {
            and("id < ?", Value::Integer(after_id));
        }
        values.push(Value::Integer(filter.page.limit));
        text.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", values.len()));
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(&text)?;
            let rows = statement.query_map(params_from_iter(values.iter()), batch_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn batch_activity(
        &self,
        batch_id: i64,
        window: ActivityWindow,
    ) -> Result<BucketCounts, StoreError> {
        let from = to_unix_micros(window.from);
        let end = to_unix_micros(window.end());
        let width = window.bucket_secs.max(1).saturating_mul(1_000_000);
        self.inner.reads.read(|conn| {
            // One count per bucket, each over one range of the partial index (batch,
            // time): only index entries are read, no coupon row, and no sorting (a
            // GROUP BY over the range would sort the whole of it, several times slower).
            let mut counts = Vec::with_capacity(2);
            for column in ["issued_at", "redeemed_at"] {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT COUNT(*) FROM coupons INDEXED BY coupons_batch_{column} \
                     WHERE batch_id = ?1 AND {column} IS NOT NULL \
                       AND {column} >= ?2 AND {column} < ?3"
                ))?;
                let mut per_bucket =
                    Vec::with_capacity(usize::try_from(window.buckets).unwrap_or(0));
                for i in 0..window.buckets.max(0) {
                    let start = from.saturating_add(width.saturating_mul(i));
                    let n: i64 = statement.query_row(
                        params![batch_id, start, start.saturating_add(width).min(end)],
                        |row| row.get(0),
                    )?;
                    per_bucket.push(n);
                }
                counts.push(per_bucket);
            }
            let redeemed = counts.pop().unwrap_or_default();
            let issued = counts.pop().unwrap_or_default();
            Ok(BucketCounts { issued, redeemed })
        })
    }

    pub async fn recent_activity(&self, limit: i64) -> Result<Vec<ActivityEntry>, StoreError> {
        self.inner.reads.read(|conn| {
            let mut entries = Vec::new();
            // Three short walks down primary keys, merged by time.
            let mut batches = conn.prepare_cached(
                "SELECT id, name, created_at FROM coupon_batches ORDER BY id DESC LIMIT ?1",
            )?;
            for row in batches.query_map([limit], |row| {
                Ok(ActivityEntry {
                    at: from_unix_micros(row.get(2)?),
                    kind: ActivityKind::BatchCreated,
                    batch_id: row.get(0)?,
                    batch_name: row.get(1)?,
                    code: None,
                    user_id: None,
                    order_id: None,
                    reason: None,
                    api_key_id: None,
                })
            })? {
                entries.push(row?);
            }
            let mut coupons = conn.prepare_cached(
                "SELECT c.batch_id, b.name, c.code, c.issued_to, c.created_at, c.created_by \
                 FROM (SELECT * FROM coupons ORDER BY id DESC LIMIT ?1) c \
                 JOIN coupon_batches b ON b.id = c.batch_id",
            )?;
            for row in coupons.query_map([limit], |row| {
                let user: Option<String> = row.get(3)?;
                Ok(ActivityEntry {
                    at: from_unix_micros(row.get(4)?),
                    kind: ActivityKind::Coupon(if user.is_some() {
                        EventKind::Issued
                    } else {
                        EventKind::Generated
                    }),
                    batch_id: row.get(0)?,
                    batch_name: row.get(1)?,
                    code: Some(row.get(2)?),
                    user_id: user,
                    order_id: None,
                    reason: None,
                    api_key_id: row.get(5)?,
                })
            })? {
                entries.push(row?);
            }
            let mut events = conn.prepare_cached(
                "SELECT e.kind, e.at, e.api_key_id, e.user_id, e.order_id, e.reason, c.code, \
                     c.batch_id, b.name \
                 FROM (SELECT * FROM coupon_events ORDER BY id DESC LIMIT ?1) e \
                 JOIN coupons c ON c.id = e.coupon_id \
                 JOIN coupon_batches b ON b.id = c.batch_id",
            )?;
            for row in events.query_map([limit], |row| {
                let kind: String = row.get(0)?;
                Ok(ActivityEntry {
                    at: from_unix_micros(row.get(1)?),
                    // The CHECK constraint admits only the kinds that are stored.
                    kind: ActivityKind::Coupon(
                        EventKind::parse(&kind).unwrap_or(EventKind::Redeemed),
                    ),
                    api_key_id: row.get(2)?,
                    user_id: row.get(3)?,
                    order_id: row.get(4)?,
                    reason: row.get(5)?,
                    code: Some(row.get(6)?),
                    batch_id: row.get(7)?,
                    batch_name: row.get(8)?,
                })
            })? {
                entries.push(row?);
            }
            Ok(newest_activity(
                entries,
                usize::try_from(limit).unwrap_or(0),
            ))
        })
    }

    /// The writer is the only writer: the look at the record, the key and the record
    /// commit as one, and a second request with the claim's key sees the first's record.
    pub async fn create_api_key_once(
        &self,
        claim: IdempotencyClaim,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<KeyCreation, StoreError> {
        self.write(move |conn| {
            if let Some(record) = find_record(conn, &claim.scope, &claim.key)? {
                if record.expires_at > now {
                    return Ok(if record.fingerprint == claim.fingerprint {
                        KeyCreation::Replayed(record)
                    } else {
                        KeyCreation::Mismatch
                    });
                }
            }
            let created = insert_key(conn, &key, now)?;
            conn.prepare_cached(
                "INSERT INTO idempotency_records \
                     (scope, key, fingerprint, response_status, response_body, created_at, \
                      expires_at) \
                 VALUES (?1, ?2, ?3, 201, ?4, ?5, ?6) \
                 ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                     response_status = excluded.response_status, \
                     response_body = excluded.response_body, \
                     created_at = excluded.created_at, expires_at = excluded.expires_at",
            )?
            .execute(params![
                claim.scope,
                claim.key,
                claim.fingerprint,
                key_record_body(&created),
                to_unix_micros(now),
                to_unix_micros(claim.expires_at),
            ])?;
            Ok(KeyCreation::Created(created))
        })
        .await
    }
}
