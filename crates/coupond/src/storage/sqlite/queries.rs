//! Reads on SQLite (on the read pool), and the bulk-code chunks (on the writer).

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, OptionalExtension};

use super::commands::{
    self, batch_from_row, coupon_from_row, job_from_row, load_batch, load_coupon, BATCH_COLUMNS,
    COUPON_COLUMNS, JOB_COLUMNS,
};
use super::SqliteStore;
use crate::domain::{
    from_unix_micros, to_unix_micros, Batch, BatchStats, CodeJob, Coupon, CouponEvent,
    CouponStatus, EventKind, ListFilter,
};
use crate::storage::{BatchFilter, CouponRecord, StoreError};

/// A statement built from optional filters, with its numbered parameters.
struct Sql {
    text: String,
    params: Vec<Value>,
}

impl Sql {
    fn new(text: String) -> Sql {
        Sql {
            text,
            params: Vec::new(),
        }
    }

    /// Appends `clause`, where `?` stands for `value`'s number.
    fn and(&mut self, clause: &str, value: Value) {
        self.params.push(value);
        let n = self.params.len();
        self.text.push_str(" AND ");
        self.text.push_str(&clause.replace('?', &format!("?{n}")));
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn bind(&mut self, value: Value) -> String {
        self.params.push(value);
        format!("?{}", self.params.len())
    }
}

impl SqliteStore {
    pub async fn list_coupons(&self, filter: &ListFilter) -> Result<Vec<Coupon>, StoreError> {
        let mut sql = Sql::new(format!(
            "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
             WHERE 1"
        ));
        if let Some(user) = &filter.user_id {
            // Each half walks its own index; together they are the user's coupons. SQLite
            // looks the listed ids up by rowid (EXPLAIN QUERY PLAN: LIST SUBQUERY, SEARCH
            // c USING INTEGER PRIMARY KEY), so the table is never scanned; PostgreSQL
            // needs the query split in two pages instead (see its list_coupons).
            let u = sql.bind(Value::Text(user.clone()));
            sql.push(&format!(
                " AND c.id IN (SELECT id FROM coupons WHERE issued_to = {u} \
                   UNION SELECT id FROM coupons WHERE redeemed_by = {u})"
            ));
        }
        let now = Value::Integer(to_unix_micros(filter.now));
        match filter.status {
            None => {}
            Some(CouponStatus::Issued) => sql.and("c.status = 'issued' AND b.expires_at > ?", now),
            Some(CouponStatus::Expired) => {
                sql.and("c.status = 'issued' AND b.expires_at <= ?", now)
            }
            Some(status) => sql.and("c.status = ?", Value::Text(status.as_str().to_owned())),
        }
        if let Some(batch) = filter.batch_id {
            sql.and("c.batch_id = ?", Value::Integer(batch));
        }
        if let Some(after) = filter.created_after {
            sql.and("c.created_at >= ?", Value::Integer(to_unix_micros(after)));
        }
        if let Some(before) = filter.created_before {
            sql.and("c.created_at < ?", Value::Integer(to_unix_micros(before)));
        }
        if let Some(after_id) = filter.after_id {
            sql.and("c.id < ?", Value::Integer(after_id));
        }
        let limit = sql.bind(Value::Integer(filter.limit));
        sql.push(&format!(" ORDER BY c.id DESC LIMIT {limit}"));
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(&sql.text)?;
            let rows = statement.query_map(params_from_iter(sql.params.iter()), coupon_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn get_batch(&self, id: i64) -> Result<Option<(Batch, BatchStats)>, StoreError> {
        self.inner.reads.read(|conn| load_batch(conn, id))
    }

    pub async fn list_batches(
        &self,
        filter: &BatchFilter,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        let mut sql = Sql::new(format!(
            "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE 1"
        ));
        if let Some(active) = filter.active {
            sql.and("active = ?", Value::Integer(i64::from(active)));
        }
        if let Some(name) = &filter.name {
            sql.and(
                "instr(coupond_fold(name), ?) > 0",
                Value::Text(name.to_lowercase()),
            );
        }
        if let Some(after_id) = filter.page.after_id {
            sql.and("id < ?", Value::Integer(after_id));
        }
        let limit = sql.bind(Value::Integer(filter.page.limit));
        sql.push(&format!(" ORDER BY id DESC LIMIT {limit}"));
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(&sql.text)?;
            let rows = statement.query_map(params_from_iter(sql.params.iter()), batch_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn find_coupon(&self, code: &str) -> Result<Option<CouponRecord>, StoreError> {
        self.inner.reads.read(|conn| {
            let Some((coupon, created_by)) = load_coupon(conn, code)? else {
                return Ok(None);
            };
            let (batch, _) = load_batch(conn, coupon.batch_id)?
                .ok_or(StoreError::Internal("coupon without its batch"))?;
            Ok(Some(CouponRecord {
                coupon,
                batch,
                created_by,
            }))
        })
    }

    pub async fn coupon_events(&self, coupon_id: i64) -> Result<Vec<CouponEvent>, StoreError> {
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT kind, at, api_key_id, user_id, order_id, reason FROM coupon_events \
                 WHERE coupon_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([coupon_id], |row| {
                let kind: String = row.get(0)?;
                Ok(CouponEvent {
                    // The CHECK constraint admits only the kinds that are stored.
                    kind: EventKind::parse(&kind).unwrap_or(EventKind::Redeemed),
                    at: from_unix_micros(row.get(1)?),
                    api_key_id: row.get(2)?,
                    user_id: row.get(3)?,
                    order_id: row.get(4)?,
                    reason: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn get_code_job(&self, id: i64) -> Result<Option<CodeJob>, StoreError> {
        self.inner.reads.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM code_jobs WHERE id = ?1"
                ))?
                .query_row([id], job_from_row)
                .optional()?)
        })
    }

    pub async fn running_code_jobs(&self) -> Result<Vec<CodeJob>, StoreError> {
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM code_jobs WHERE status = 'running' ORDER BY id"
            ))?;
            let rows = statement.query_map([], job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn run_code_job_chunk(&self, job_id: i64) -> Result<Option<CodeJob>, StoreError> {
        self.write(move |conn| commands::run_code_job_chunk(conn, job_id, crate::domain::now()))
            .await
    }

    pub async fn batch_coupons(
        &self,
        batch_id: i64,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Coupon>, StoreError> {
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
                 WHERE c.batch_id = ?1 AND c.id > ?2 ORDER BY c.id LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![batch_id, after_id, limit], coupon_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
