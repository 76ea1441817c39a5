//! Reads on PostgreSQL, and the bulk-code chunks.

use sqlx::{Acquire, Postgres, QueryBuilder};

use super::rows::{
    BatchRow, BatchWithStats, CouponRow, EventRow, JobRow, BATCH_COLUMNS, BATCH_STATS,
    COUPON_COLUMNS, JOB_COLUMNS,
};
use super::{commands, PgStore};
use crate::domain::coupon::Page;
use crate::domain::{Batch, BatchStats, CodeJob, Coupon, CouponEvent, CouponStatus, ListFilter};
use crate::storage::{BatchFilter, CouponRecord, StoreError};

impl PgStore {
    pub async fn list_coupons(&self, filter: &ListFilter) -> Result<Vec<Coupon>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new("");
        match &filter.user_id {
            // A user's coupons are those issued to them and those they redeemed. Each half
            // walks its own index in id order and stops after a page, so a page costs a
            // page whatever the table holds; `c.id IN (one UNION other)` let the planner
            // hash the user's ids and scan the whole table for them.
            Some(user) => {
                query.push("SELECT * FROM ((");
                push_coupon_page(&mut query, Some(("c.issued_to", user)), filter);
                query.push(") UNION (");
                push_coupon_page(&mut query, Some(("c.redeemed_by", user)), filter);
                query
                    .push(")) u ORDER BY id DESC LIMIT ")
                    .push_bind(filter.limit);
            }
            None => push_coupon_page(&mut query, None, filter),
        }
        let mut conn = self.acquire().await?;
        let rows: Vec<CouponRow> = query.build_query_as().fetch_all(&mut *conn).await?;
        Ok(rows.into_iter().map(Coupon::from).collect())
    }

    pub async fn get_batch(&self, id: i64) -> Result<Option<(Batch, BatchStats)>, StoreError> {
        let mut conn = self.acquire().await?;
        let row: Option<BatchWithStats> = sqlx::query_as(&format!(
            "SELECT {BATCH_COLUMNS}, {BATCH_STATS} FROM coupon_batches b WHERE b.id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.map(Into::into))
    }

    pub async fn list_batches(
        &self,
        filter: &BatchFilter,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {BATCH_COLUMNS}, {BATCH_STATS} FROM coupon_batches b WHERE TRUE"
        ));
        if let Some(active) = filter.active {
            query.push(" AND b.active = ").push_bind(active);
        }
        self.batch_page(query, filter.name.as_deref(), filter.page)
            .await
    }

    pub async fn find_coupon(&self, code: &str) -> Result<Option<CouponRecord>, StoreError> {
        let mut conn = self.acquire().await?;
        let row: Option<CouponRow> = sqlx::query_as(&format!(
            "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
             WHERE c.code = $1"
        ))
        .bind(code)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let created_by = row.created_by;
        let coupon = Coupon::from(row);
        let batch: BatchRow = sqlx::query_as(&format!(
            "SELECT {BATCH_COLUMNS} FROM coupon_batches b WHERE b.id = $1"
        ))
        .bind(coupon.batch_id)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Some(CouponRecord {
            coupon,
            batch: batch.into(),
            created_by,
        }))
    }

    pub async fn coupon_events(&self, coupon_id: i64) -> Result<Vec<CouponEvent>, StoreError> {
        let mut conn = self.acquire().await?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT kind, at, api_key_id, user_id, order_id, reason FROM coupon_events \
             WHERE coupon_id = $1 ORDER BY id",
        )
        .bind(coupon_id)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn get_code_job(&self, id: i64) -> Result<Option<CodeJob>, StoreError> {
        let mut conn = self.acquire().await?;
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM code_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.map(Into::into))
    }

    pub async fn running_code_jobs(&self) -> Result<Vec<CodeJob>, StoreError> {
        let mut conn = self.acquire().await?;
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM code_jobs WHERE status = 'running' ORDER BY id"
        ))
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn run_code_job_chunk(&self, job_id: i64) -> Result<Option<CodeJob>, StoreError> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let job = commands::run_code_job_chunk(&mut tx, job_id, crate::domain::now()).await?;
        tx.commit().await?;
        Ok(job)
    }

    pub async fn batch_coupons(
        &self,
        batch_id: i64,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Coupon>, StoreError> {
        let mut conn = self.acquire().await?;
        let rows: Vec<CouponRow> = sqlx::query_as(&format!(
            "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
             WHERE c.batch_id = $1 AND c.id > $2 ORDER BY c.id LIMIT $3"
        ))
        .bind(batch_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(Coupon::from).collect())
    }
}

/// One page of coupons matching `filter`, newest first; `who` narrows it to the rows
/// whose `column` (a name chosen by the code) holds the user.
fn push_coupon_page<'a>(
    query: &mut QueryBuilder<'a, Postgres>,
    who: Option<(&'static str, &'a String)>,
    filter: &'a ListFilter,
) {
    query.push(format!(
        "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
         WHERE TRUE"
    ));
    if let Some((column, user)) = who {
        query.push(" AND ").push(column).push(" = ").push_bind(user);
    }
    match filter.status {
        None => {}
        Some(CouponStatus::Issued) => {
            query
                .push(" AND c.status = 'issued' AND b.expires_at > ")
                .push_bind(filter.now);
        }
        Some(CouponStatus::Expired) => {
            query
                .push(" AND c.status = 'issued' AND b.expires_at <= ")
                .push_bind(filter.now);
        }
        Some(status) => {
            query.push(" AND c.status = ").push_bind(status.as_str());
        }
    }
    if let Some(batch) = filter.batch_id {
        query.push(" AND c.batch_id = ").push_bind(batch);
    }
    if let Some(after) = filter.created_after {
        query.push(" AND c.created_at >= ").push_bind(after);
    }
    if let Some(before) = filter.created_before {
        query.push(" AND c.created_at < ").push_bind(before);
    }
    if let Some(after_id) = filter.after_id {
        query.push(" AND c.id < ").push_bind(after_id);
    }
    query
        .push(" ORDER BY c.id DESC LIMIT ")
        .push_bind(filter.limit);
}

impl PgStore {
    /// Runs a batch query whose filters are in `query`, narrowed by a name search and
    /// cut to one page, newest first (the API's list and the admin console's).
    pub(super) async fn batch_page(
        &self,
        mut query: QueryBuilder<'_, Postgres>,
        name: Option<&str>,
        page: Page,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        if let Some(name) = name {
            query
                .push(" AND b.name ILIKE ")
                .push_bind(format!("%{}%", crate::storage::escape_like(name)))
                .push(" ESCAPE '\\'");
        }
        if let Some(after_id) = page.after_id {
            query.push(" AND b.id < ").push_bind(after_id);
        }
        query
            .push(" ORDER BY b.id DESC LIMIT ")
            .push_bind(page.limit);
        let mut conn = self.acquire().await?;
        let rows: Vec<BatchWithStats> = query.build_query_as().fetch_all(&mut *conn).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
