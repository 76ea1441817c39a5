//! SQLite: one writer. Every write goes through a single task that owns the only write
//! connection and commits whatever requests are waiting as one transaction (group
//! commit), each inside its own savepoint so one request's failure undoes only its own
//! work. Concurrent writers therefore queue instead of failing with "database is
//! locked", and a commit is paid once per group rather than once per request. Reads use
//! a separate pool; WAL lets them run beside the writer.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, FromRow, QueryBuilder, Sqlite};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    Command, CommandResult, Effect, IdempotencyRecord, StoreError, StoreOptions, StoredResponse,
    WriteOutcome, WriteRequest,
};
use crate::domain::code::{generate_code, MAX_CODE_ATTEMPTS};
use crate::domain::coupon::check_redeemable;
use crate::domain::{
    from_unix_micros, to_unix_micros, Batch, Coupon, CouponStatus, DiscountType, IssueRequest,
    ListFilter, NewBatch, RedeemRequest, Rejection,
};
use crate::faults::{FaultAction, Faults};

/// Most requests one transaction commits; bounds the latency a group adds.
const MAX_GROUP: usize = 256;
/// Requests allowed to wait for the writer before callers feel backpressure.
const QUEUE_DEPTH: usize = 8192;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    reads: SqlitePool,
    writer: mpsc::Sender<Job>,
    connect: SqliteConnectOptions,
}

enum Job {
    Work(Box<Work>),
    /// Finish what is queued before it, then stop.
    Close(oneshot::Sender<()>),
}

enum Work {
    Execute(
        WriteRequest,
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
    ),
    Purge {
        now: OffsetDateTime,
        limit: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// A job's result, held back until its group has committed.
enum Done {
    Execute(
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
        Result<WriteOutcome, StoreError>,
    ),
    Purge(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
}

impl Done {
    fn is_ok(&self) -> bool {
        match self {
            Done::Execute(_, r) => r.is_ok(),
            Done::Purge(_, r) => r.is_ok(),
        }
    }

    fn send(self) {
        // A caller that went away no longer needs the answer; its effect stands.
        match self {
            Done::Execute(reply, result) => drop(reply.send(result)),
            Done::Purge(reply, result) => drop(reply.send(result)),
        }
    }

    fn fail(self, why: &str) {
        let error = || StoreError::GroupCommitFailed(why.to_owned());
        match self {
            Done::Execute(reply, _) => drop(reply.send(Err(error()))),
            Done::Purge(reply, _) => drop(reply.send(Err(error()))),
        }
    }
}

#[derive(FromRow)]
struct BatchRow {
    id: i64,
    name: String,
    discount_type: String,
    amount: Option<i64>,
    percent: Option<i64>,
    per_user_limit: i64,
    total_limit: i64,
    issued: i64,
    expires_at: i64,
    created_at: i64,
}

impl BatchRow {
    fn to_batch(&self) -> Batch {
        Batch {
            id: self.id,
            name: self.name.clone(),
            // The CHECK constraint admits only the two known values.
            discount_type: DiscountType::parse(&self.discount_type).unwrap_or(DiscountType::Fixed),
            amount: self.amount,
            percent: self.percent,
            per_user_limit: self.per_user_limit,
            total_limit: self.total_limit,
            expires_at: from_unix_micros(self.expires_at),
            created_at: from_unix_micros(self.created_at),
        }
    }
}

#[derive(FromRow)]
struct CouponRow {
    id: i64,
    batch_id: i64,
    code: String,
    status: String,
    issued_to: Option<String>,
    issued_at: Option<i64>,
    redeemed_by: Option<String>,
    redeemed_at: Option<i64>,
    order_id: Option<String>,
    created_at: i64,
}

impl From<CouponRow> for Coupon {
    fn from(row: CouponRow) -> Coupon {
        Coupon {
            id: row.id,
            batch_id: row.batch_id,
            code: row.code,
            status: CouponStatus::parse(&row.status).unwrap_or(CouponStatus::Issued),
            issued_to: row.issued_to,
            issued_at: row.issued_at.map(from_unix_micros),
            redeemed_by: row.redeemed_by,
            redeemed_at: row.redeemed_at.map(from_unix_micros),
            order_id: row.order_id,
            created_at: from_unix_micros(row.created_at),
        }
    }
}

#[derive(FromRow)]
struct RecordRow {
    fingerprint: String,
    response_status: i64,
    response_body: Vec<u8>,
    created_at: i64,
    expires_at: i64,
}

impl From<RecordRow> for IdempotencyRecord {
    fn from(row: RecordRow) -> IdempotencyRecord {
        IdempotencyRecord {
            fingerprint: row.fingerprint,
            response: StoredResponse {
                status: u16::try_from(row.response_status).unwrap_or(500),
                body: row.response_body,
            },
            created_at: from_unix_micros(row.created_at),
            expires_at: from_unix_micros(row.expires_at),
        }
    }
}

const COUPON_COLUMNS: &str = "id, batch_id, code, status, issued_to, issued_at, redeemed_by, \
                              redeemed_at, order_id, created_at";
const BATCH_COLUMNS: &str = "id, name, discount_type, amount, percent, per_user_limit, \
                             total_limit, issued, expires_at, created_at";
const RECORD_QUERY: &str = "SELECT fingerprint, response_status, response_body, created_at, \
                            expires_at FROM idempotency_records WHERE scope = ?1 AND key = ?2";

impl SqliteStore {
    pub async fn connect(url: &str, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        // WAL with synchronous=NORMAL: a commit survives a crash of coupond or of the
        // process; a power cut can lose the last commits, never corrupt the file.
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let writer_conn = SqliteConnection::connect_with(&connect).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect.clone())
            .await?;
        let (writer, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(writer_conn, queue, options.faults));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                reads,
                writer,
                connect,
            }),
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        // A connection of its own: the migrator runs its own transactions, and
        // busy_timeout makes it queue behind the writer rather than fail.
        let mut conn = SqliteConnection::connect_with(&self.inner.connect).await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.reads).await?;
        if self.inner.writer.is_closed() {
            return Err(StoreError::WriterGone);
        }
        Ok(())
    }

    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.writer.send(Job::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        self.inner.reads.close().await;
    }

    pub async fn find_idempotency_record(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row: Option<RecordRow> = sqlx::query_as(RECORD_QUERY)
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.inner.reads)
            .await?;
        Ok(row.map(IdempotencyRecord::from))
    }

    pub async fn execute(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        // Replays are reads: answer them from the read pool, without queueing behind
        // the writer. The writer looks again before it writes, so this is only a
        // shortcut, never the decision.
        let claim = &request.claim;
        if let Some(outcome) = self
            .find_idempotency_record(&claim.scope, &claim.key)
            .await?
            .and_then(|record| record.answer(&claim.fingerprint, request.now))
        {
            return Ok(outcome);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Job::Work(Box::new(Work::Execute(request, reply))))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn purge_idempotency(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Job::Work(Box::new(Work::Purge { now, limit, reply })))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn list_coupons(&self, filter: &ListFilter) -> Result<Vec<Coupon>, StoreError> {
        let mut query =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COUPON_COLUMNS} FROM coupons WHERE 1"));
        if let Some(user) = &filter.user_id {
            query
                .push(" AND (issued_to = ")
                .push_bind(user)
                .push(" OR redeemed_by = ")
                .push_bind(user)
                .push(")");
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit);
        let rows: Vec<CouponRow> = query.build_query_as().fetch_all(&self.inner.reads).await?;
        Ok(rows.into_iter().map(Coupon::from).collect())
    }
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<Job>,
    faults: Arc<Faults>,
) {
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let Some(first) = queue.recv().await else {
            break;
        };
        let mut group = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Work(work) => group.push(*work),
                Job::Close(reply) => {
                    closing = Some(reply);
                    break;
                }
            }
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, group, &faults).await;
        }
    }
    let _ = conn.close().await;
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

/// Runs a group of jobs in one transaction and answers them once it has committed.
async fn commit_group(conn: &mut SqliteConnection, group: Vec<Work>, faults: &Faults) {
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        tracing::error!(error = %e, "sqlite writer could not begin a transaction");
        let why = e.to_string();
        for work in group {
            work.fail(&why);
        }
        return;
    }
    let mut done = Vec::with_capacity(group.len());
    for work in group {
        done.push(run_in_savepoint(conn, work, faults).await);
    }
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => done.into_iter().for_each(Done::send),
        Err(e) => {
            tracing::error!(error = %e, "sqlite group commit failed");
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            let why = e.to_string();
            done.into_iter().for_each(|d| d.fail(&why));
        }
    }
}

impl Work {
    fn fail(self, why: &str) {
        let error = StoreError::GroupCommitFailed(why.to_owned());
        match self {
            Work::Execute(_, reply) => drop(reply.send(Err(error))),
            Work::Purge { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

async fn run_in_savepoint(conn: &mut SqliteConnection, work: Work, faults: &Faults) -> Done {
    if let Err(e) = sqlx::query("SAVEPOINT job").execute(&mut *conn).await {
        return match work {
            Work::Execute(_, reply) => Done::Execute(reply, Err(e.into())),
            Work::Purge { reply, .. } => Done::Purge(reply, Err(e.into())),
        };
    }
    let done = match work {
        Work::Execute(request, reply) => Done::Execute(reply, execute(conn, request, faults).await),
        Work::Purge { now, limit, reply } => Done::Purge(reply, purge(conn, now, limit).await),
    };
    if !done.is_ok() {
        if let Err(e) = sqlx::query("ROLLBACK TO job").execute(&mut *conn).await {
            tracing::error!(error = %e, "sqlite rollback to savepoint failed");
        }
    }
    if let Err(e) = sqlx::query("RELEASE job").execute(&mut *conn).await {
        tracing::error!(error = %e, "sqlite release savepoint failed");
    }
    done
}

async fn purge(
    conn: &mut SqliteConnection,
    now: OffsetDateTime,
    limit: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM idempotency_records WHERE (scope, key) IN ( \
             SELECT scope, key FROM idempotency_records WHERE expires_at <= ?1 LIMIT ?2)",
    )
    .bind(to_unix_micros(now))
    .bind(limit)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

async fn execute(
    conn: &mut SqliteConnection,
    request: WriteRequest,
    faults: &Faults,
) -> Result<WriteOutcome, StoreError> {
    let WriteRequest {
        claim,
        command,
        render,
        now,
    } = request;
    // The writer is the only writer, so what this read sees cannot change before the
    // insert below: no claim row is needed to keep a duplicate out.
    let existing: Option<RecordRow> = sqlx::query_as(RECORD_QUERY)
        .bind(&claim.scope)
        .bind(&claim.key)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(outcome) = existing
        .map(IdempotencyRecord::from)
        .and_then(|record| record.answer(&claim.fingerprint, now))
    {
        return Ok(outcome);
    }

    let result = run_command(conn, command, now).await?;
    let response = render(&result);
    sqlx::query(
        "INSERT INTO idempotency_records \
             (scope, key, fingerprint, response_status, response_body, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
             response_status = excluded.response_status, response_body = excluded.response_body, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(i64::from(response.status))
    .bind(&response.body)
    .bind(to_unix_micros(now))
    .bind(to_unix_micros(claim.expires_at))
    .execute(&mut *conn)
    .await?;

    match faults.before_commit(&claim.key) {
        FaultAction::Proceed => {}
        FaultAction::Fail => return Err(StoreError::InjectedFault),
        FaultAction::Pause(d) => tokio::time::sleep(d).await,
    }
    Ok(WriteOutcome::Executed(response))
}

async fn run_command(
    conn: &mut SqliteConnection,
    command: Command,
    now: OffsetDateTime,
) -> Result<CommandResult, StoreError> {
    Ok(match command {
        Command::CreateBatch(new) => Ok(Effect::BatchCreated(create_batch(conn, new, now).await?)),
        Command::Issue(request) => issue_coupon(conn, request, now).await?.map(Effect::Issued),
        Command::Redeem(request) => redeem_coupon(conn, request, now)
            .await?
            .map(Effect::Redeemed),
    })
}

async fn create_batch(
    conn: &mut SqliteConnection,
    new: NewBatch,
    now: OffsetDateTime,
) -> Result<Batch, StoreError> {
    let row: BatchRow = sqlx::query_as(&format!(
        "INSERT INTO coupon_batches (name, discount_type, amount, percent, per_user_limit, \
             total_limit, expires_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING {BATCH_COLUMNS}"
    ))
    .bind(&new.name)
    .bind(new.discount_type.as_str())
    .bind(new.amount)
    .bind(new.percent)
    .bind(new.per_user_limit)
    .bind(new.total_limit)
    .bind(to_unix_micros(new.expires_at))
    .bind(to_unix_micros(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.to_batch())
}

async fn issue_coupon(
    conn: &mut SqliteConnection,
    request: IssueRequest,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let row: Option<BatchRow> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE id = ?1"
    ))
    .bind(request.batch_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Err(Rejection::BatchNotFound));
    };
    let batch = row.to_batch();
    if let Err(rejection) = batch.check_issuable(now) {
        return Ok(Err(rejection));
    }
    let held: Option<(i64,)> = sqlx::query_as(
        "SELECT issued FROM user_batch_counters WHERE batch_id = ?1 AND user_id = ?2",
    )
    .bind(batch.id)
    .bind(&request.user_id)
    .fetch_optional(&mut *conn)
    .await?;
    if held.map_or(0, |(n,)| n) >= batch.per_user_limit {
        return Ok(Err(Rejection::PerUserLimitReached));
    }
    if row.issued >= batch.total_limit {
        return Ok(Err(Rejection::BatchLimitReached));
    }

    let mut coupon = None;
    for _ in 0..MAX_CODE_ATTEMPTS {
        coupon = sqlx::query_as::<_, CouponRow>(&format!(
            "INSERT INTO coupons (batch_id, code, status, issued_to, issued_at, created_at, \
                 updated_at) \
             VALUES (?1, ?2, 'issued', ?3, ?4, ?4, ?4) \
             ON CONFLICT (code) DO NOTHING RETURNING {COUPON_COLUMNS}"
        ))
        .bind(batch.id)
        .bind(generate_code())
        .bind(&request.user_id)
        .bind(to_unix_micros(now))
        .fetch_optional(&mut *conn)
        .await?;
        if coupon.is_some() {
            break;
        }
    }
    let Some(coupon) = coupon else {
        return Err(StoreError::CodeSpaceExhausted);
    };
    sqlx::query(
        "INSERT INTO user_batch_counters (batch_id, user_id, issued) VALUES (?1, ?2, 1) \
         ON CONFLICT (batch_id, user_id) DO UPDATE SET issued = issued + 1",
    )
    .bind(batch.id)
    .bind(&request.user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE coupon_batches SET issued = issued + 1 WHERE id = ?1")
        .bind(batch.id)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(coupon.into()))
}

async fn redeem_coupon(
    conn: &mut SqliteConnection,
    request: RedeemRequest,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let row: Option<CouponRow> = sqlx::query_as(&format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE code = ?1"
    ))
    .bind(&request.code)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(mut coupon) = row.map(Coupon::from) else {
        return Ok(Err(Rejection::CouponNotFound));
    };
    let batch: BatchRow = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE id = ?1"
    ))
    .bind(coupon.batch_id)
    .fetch_one(&mut *conn)
    .await?;
    if let Err(rejection) = check_redeemable(&coupon, &batch.to_batch(), now) {
        return Ok(Err(rejection));
    }
    coupon.redeem(&request, now);
    sqlx::query(
        "UPDATE coupons SET status = ?2, redeemed_by = ?3, redeemed_at = ?4, order_id = ?5, \
             updated_at = ?4 WHERE id = ?1",
    )
    .bind(coupon.id)
    .bind(coupon.status.as_str())
    .bind(&coupon.redeemed_by)
    .bind(to_unix_micros(now))
    .bind(&coupon.order_id)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(coupon))
}
