//! Storage: every SQL statement and every transaction lives below this module. One store
//! per backend; `Store` dispatches to the one the database URL selects.

mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::coupon::Page;
use crate::domain::{
    ApiKey, Batch, BatchStats, CancelRequest, CodeJob, Coupon, CouponEvent, IssueRequest,
    ListFilter, NewApiKey, NewBatch, NewCodeJob, RedeemRequest, Rejection, UnredeemRequest,
};
use crate::faults::Faults;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("the transaction could not be committed: {0}")]
    GroupCommitFailed(String),
    #[error("no unused coupon code found after several attempts")]
    CodeSpaceExhausted,
    #[error("fault injected before commit")]
    InjectedFault,
    #[error("internal storage error: {0}")]
    Internal(&'static str),
    #[error("a row lock was not granted in time")]
    LockTimeout,
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    #[error("the database schema is at migration {applied:?}, this coupond needs {expected}")]
    SchemaOutOfDate { applied: Option<i64>, expected: i64 },
}

impl StoreError {
    /// Whether the database could not be reached at all, as opposed to a query failing.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::WriterGone
            | StoreError::GroupCommitFailed(_)
            | StoreError::Unavailable(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Database(sqlx::Error::Database(db)) => {
                // Connection exceptions (08), the server shutting down or refusing new
                // connections (57P), too many connections (53300).
                db.code().is_some_and(|code| {
                    code.starts_with("08") || code.starts_with("57P") || code == "53300"
                })
            }
            StoreError::Database(e) => matches!(
                e,
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }
}

/// A write the service performs at most once per idempotency key.
#[derive(Debug, Clone)]
pub enum Command {
    CreateBatch(NewBatch),
    Issue(IssueRequest),
    Redeem(RedeemRequest),
    Cancel(CancelRequest),
    Unredeem(UnredeemRequest),
    SetBatchActive { batch_id: i64, active: bool },
    StartCodeJob(NewCodeJob),
}

/// What a command did when it succeeded.
#[derive(Debug, Clone)]
pub enum Effect {
    BatchCreated(Batch),
    Issued(Coupon),
    Redeemed(Coupon),
    Cancelled(Coupon),
    Unredeemed(Coupon),
    BatchUpdated(Batch, BatchStats),
    CodeJobStarted(CodeJob),
}

pub type CommandResult = Result<Effect, Rejection>;

/// The response as it goes over the wire, kept byte for byte so a replay is identical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Turns a command's result into the response that is stored with it. The HTTP layer
/// supplies it, so the store never needs to know the wire format, yet the response is
/// written in the same transaction as the effect.
pub type Render = fn(&CommandResult, OffsetDateTime) -> StoredResponse;

#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub claim: IdempotencyClaim,
    /// The API key making the change, for the coupon's history.
    pub actor: Option<i64>,
    pub command: Command,
    pub render: Render,
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The command ran now; effect and response committed together.
    Executed(StoredResponse),
    /// An earlier request with this key committed; this is its response.
    Replayed(Replay),
    /// The key was used before with a different request.
    FingerprintMismatch,
    /// Another request with this key is still running and did not finish in time.
    InProgress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub response: StoredResponse,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl IdempotencyRecord {
    /// What a new request with this record's key gets, if the record still counts.
    pub fn answer(self: Arc<Self>, fingerprint: &str, now: OffsetDateTime) -> Option<WriteOutcome> {
        if self.expires_at <= now {
            None
        } else if self.fingerprint == fingerprint {
            Some(WriteOutcome::Replayed(Replay::Record(self)))
        } else {
            Some(WriteOutcome::FingerprintMismatch)
        }
    }
}

/// A stored response answered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// From the whole record, which a process may keep in memory for the key's next
    /// retry (it never changes while it is live).
    Record(Arc<IdempotencyRecord>),
    /// Only the response: PostgreSQL's path for a key committed by someone else during
    /// the write reads no more than that.
    Response(StoredResponse),
}

impl Replay {
    pub fn into_response(self) -> StoredResponse {
        match self {
            Replay::Record(record) => record.response.clone(),
            Replay::Response(response) => response,
        }
    }
}

/// A change to append to a coupon's history.
pub(crate) struct NewEvent<'a> {
    pub coupon_id: i64,
    pub kind: crate::domain::EventKind,
    pub at: OffsetDateTime,
    pub actor: Option<i64>,
    pub user_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// A coupon as found by its code, with what a reader of it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponRecord {
    pub coupon: Coupon,
    pub batch: Batch,
    pub created_by: Option<i64>,
}

/// The batch list's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFilter {
    pub page: Page,
    pub active: Option<bool>,
    pub name: Option<String>,
}

/// How busy the database side is, for the metrics page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub in_use: usize,
    pub idle: usize,
    /// SQLite: writes waiting for the writer.
    pub queued_writes: usize,
}

/// Which time of an idempotency record a purge goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeBy {
    /// Records that have expired: what the background purge deletes.
    ExpiresAt,
    /// Records created long enough ago, expired or not: an operator's choice.
    CreatedAt,
}

impl PurgeBy {
    /// The column, as written in both schemas.
    pub(crate) fn column(self) -> &'static str {
        match self {
            PurgeBy::ExpiresAt => "expires_at",
            PurgeBy::CreatedAt => "created_at",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// How long a duplicate waits on the database for an in-flight original.
    pub idempotency_wait: Duration,
    /// How long any other row lock is waited for before the write gives up.
    pub lock_timeout: Duration,
    /// How long a request waits for a pooled connection (PostgreSQL).
    pub acquire_timeout: Duration,
    pub faults: Arc<Faults>,
}

// ---------------------------------------------------------------------------------------
// The admin console (http::admin): its sessions and the reads only its pages make.
// ---------------------------------------------------------------------------------------

/// A signed-in operator of the admin console, as stored: never the session token
/// itself, only its SHA-256 (the lookup key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    pub id: i64,
    /// The admin API key the operator signed in with.
    pub api_key_id: i64,
    /// That key's name.
    pub key_name: String,
    /// What every form of the session must carry back.
    pub csrf_token: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
}

/// A session to store at sign-in.
#[derive(Debug, Clone)]
pub struct NewAdminSession {
    pub token_hash: [u8; 32],
    pub api_key_id: i64,
    pub csrf_token: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Which batches the console's list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Switched on and not expired.
    Active,
    /// Deactivated (expired or not).
    Inactive,
    /// Past `expires_at`.
    Expired,
}

/// The console's batch list: newest first, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminBatchFilter {
    pub page: Page,
    pub state: Option<BatchState>,
    /// Part of the name, in any case.
    pub name: Option<String>,
    /// What "expired" is measured against.
    pub now: OffsetDateTime,
}

/// Equal time buckets, `buckets` of `bucket_secs` from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityWindow {
    pub from: OffsetDateTime,
    pub bucket_secs: i64,
    pub buckets: i64,
}

impl ActivityWindow {
    pub fn end(&self) -> OffsetDateTime {
        self.from + time::Duration::seconds(self.bucket_secs.saturating_mul(self.buckets))
    }
}

/// A batch's coupons issued and redeemed per bucket of an `ActivityWindow` (both
/// `buckets` long; a redemption later given back no longer counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketCounts {
    pub issued: Vec<i64>,
    pub redeemed: Vec<i64>,
}

/// What happened, for the console's "recent activity".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    BatchCreated,
    Coupon(crate::domain::EventKind),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityEntry {
    pub at: OffsetDateTime,
    pub kind: ActivityKind,
    pub batch_id: i64,
    pub batch_name: String,
    pub code: Option<String>,
    pub user_id: Option<String>,
    pub order_id: Option<String>,
    pub reason: Option<String>,
    pub api_key_id: Option<i64>,
}

/// What creating an API key under an idempotency key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCreation {
    /// Created now; the record stored with it names the key, never its secret.
    Created(ApiKey),
    /// The idempotency key was used before for the same request: its record.
    Replayed(IdempotencyRecord),
    /// The idempotency key was used before for another request.
    Mismatch,
    /// Another request with the idempotency key is still running.
    InProgress,
}

/// What the idempotency record of an API key created from the console holds: enough
/// to say which key a repeated form made, never the key itself.
pub(crate) fn key_record_body(key: &ApiKey) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": key.id,
        "name": key.name,
        "scope": key.scope.as_str(),
        "prefix": key.prefix,
    }))
    .unwrap_or_default()
}

/// Newest first, by time, at most `limit`.
pub(crate) fn newest_activity(mut entries: Vec<ActivityEntry>, limit: usize) -> Vec<ActivityEntry> {
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    entries.truncate(limit);
    entries
}

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect(url, options).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::connect(url, options).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    /// Runs a command at most once for its idempotency key, storing its response in
    /// the same transaction as its effect.
    pub async fn execute(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.execute(request).await,
            Store::Postgres(s) => s.guarded(s.execute(request)).await,
        }
    }

    /// A committed idempotency record, read without taking any write lock.
    pub async fn find_idempotency_record(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.find_idempotency_record(scope, key).await,
            Store::Postgres(s) => s.guarded(s.find_idempotency_record(scope, key)).await,
        }
    }

    pub async fn list_coupons(&self, filter: &ListFilter) -> Result<Vec<Coupon>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_coupons(filter).await,
            Store::Postgres(s) => s.guarded(s.list_coupons(filter)).await,
        }
    }

    /// A batch with its counters.
    pub async fn get_batch(&self, id: i64) -> Result<Option<(Batch, BatchStats)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_batch(id).await,
            Store::Postgres(s) => s.guarded(s.get_batch(id)).await,
        }
    }

    /// Batches, newest first, a page at a time; `name` matches part of the name in any
    /// case.
    pub async fn list_batches(
        &self,
        filter: &BatchFilter,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_batches(filter).await,
            Store::Postgres(s) => s.guarded(s.list_batches(filter)).await,
        }
    }

    /// A coupon by its (normalised) code, with its batch and the API key that created
    /// it.
    pub async fn find_coupon(&self, code: &str) -> Result<Option<CouponRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.find_coupon(code).await,
            Store::Postgres(s) => s.guarded(s.find_coupon(code)).await,
        }
    }

    /// The changes stored for a coupon, oldest first.
    pub async fn coupon_events(&self, coupon_id: i64) -> Result<Vec<CouponEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.coupon_events(coupon_id).await,
            Store::Postgres(s) => s.guarded(s.coupon_events(coupon_id)).await,
        }
    }

    pub async fn get_code_job(&self, id: i64) -> Result<Option<CodeJob>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_code_job(id).await,
            Store::Postgres(s) => s.guarded(s.get_code_job(id)).await,
        }
    }

    /// Jobs still generating codes (after a restart, the ones to resume).
    pub async fn running_code_jobs(&self) -> Result<Vec<CodeJob>, StoreError> {
        match self {
            Store::Sqlite(s) => s.running_code_jobs().await,
            Store::Postgres(s) => s.guarded(s.running_code_jobs()).await,
        }
    }

    /// Generates the next chunk of a job's codes in one transaction, together with the
    /// job's progress; answers the job as it stands afterwards.
    pub async fn run_code_job_chunk(&self, job_id: i64) -> Result<Option<CodeJob>, StoreError> {
        match self {
            Store::Sqlite(s) => s.run_code_job_chunk(job_id).await,
            Store::Postgres(s) => s.guarded(s.run_code_job_chunk(job_id)).await,
        }
    }

    /// A batch's coupons in id order, a page at a time, for exports.
    pub async fn batch_coupons(
        &self,
        batch_id: i64,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Coupon>, StoreError> {
        match self {
            Store::Sqlite(s) => s.batch_coupons(batch_id, after_id, limit).await,
            Store::Postgres(s) => s.guarded(s.batch_coupons(batch_id, after_id, limit)).await,
        }
    }

    /// Deletes up to `limit` idempotency records whose `by` time is at or before
    /// `cutoff`; returns how many went.
    pub async fn purge_idempotency(
        &self,
        by: PurgeBy,
        cutoff: OffsetDateTime,
        limit: i64,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_idempotency(by, cutoff, limit).await,
            Store::Postgres(s) => s.guarded(s.purge_idempotency(by, cutoff, limit)).await,
        }
    }

    pub async fn create_api_key(
        &self,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<ApiKey, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_api_key(key, now).await,
            Store::Postgres(s) => s.guarded(s.create_api_key(key, now)).await,
        }
    }

    /// Creates `key` if, and only if, no API key exists yet.
    pub async fn bootstrap_api_key(
        &self,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<Option<ApiKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.bootstrap_api_key(key, now).await,
            Store::Postgres(s) => s.guarded(s.bootstrap_api_key(key, now)).await,
        }
    }

    /// Revokes a key (a no-op if it already was); `None` if there is no such key.
    pub async fn revoke_api_key(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<Option<ApiKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.revoke_api_key(id, now).await,
            Store::Postgres(s) => s.guarded(s.revoke_api_key(id, now)).await,
        }
    }

    /// Records when keys were last used (never moving a time backwards).
    pub async fn touch_api_keys(&self, used: Vec<(i64, OffsetDateTime)>) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        match self {
            Store::Sqlite(s) => s.touch_api_keys(used).await,
            Store::Postgres(s) => s.guarded(s.touch_api_keys(used)).await,
        }
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_api_keys().await,
            Store::Postgres(s) => s.guarded(s.list_api_keys()).await,
        }
    }

    /// The key with this SHA-256, revoked or not.
    pub async fn find_api_key(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.find_api_key(hash).await,
            Store::Postgres(s) => s.guarded(s.find_api_key(hash)).await,
        }
    }

    /// Every key not revoked, with its hash.
    pub async fn active_api_keys(&self) -> Result<Vec<(Vec<u8>, ApiKey)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.active_api_keys().await,
            Store::Postgres(s) => s.guarded(s.active_api_keys()).await,
        }
    }

    // -- The admin console ---------------------------------------------------------

    /// Stores a new console session; answers its id.
    pub async fn create_admin_session(&self, session: NewAdminSession) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_admin_session(session).await,
            Store::Postgres(s) => s.guarded(s.create_admin_session(session)).await,
        }
    }

    /// The live session whose token has this SHA-256: not expired at `now`, and its API
    /// key still an admin key that is not revoked.
    pub async fn find_admin_session(
        &self,
        token_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Option<AdminSession>, StoreError> {
        match self {
            Store::Sqlite(s) => s.find_admin_session(token_hash, now).await,
            Store::Postgres(s) => s.guarded(s.find_admin_session(token_hash, now)).await,
        }
    }

    /// Records that a session was used at `now`.
    pub async fn touch_admin_session(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.touch_admin_session(id, now).await,
            Store::Postgres(s) => s.guarded(s.touch_admin_session(id, now)).await,
        }
    }

    /// Ends one session (sign-out).
    pub async fn delete_admin_session(&self, id: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_admin_session(id).await,
            Store::Postgres(s) => s.guarded(s.delete_admin_session(id)).await,
        }
    }

    /// Ends every session opened with an API key (it was revoked); answers how many.
    pub async fn end_admin_sessions_of_key(&self, api_key_id: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.end_admin_sessions_of_key(api_key_id).await,
            Store::Postgres(s) => s.guarded(s.end_admin_sessions_of_key(api_key_id)).await,
        }
    }

    /// Deletes the sessions expired at `now`; answers how many.
    pub async fn purge_admin_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_admin_sessions(now).await,
            Store::Postgres(s) => s.guarded(s.purge_admin_sessions(now)).await,
        }
    }

    /// Batches for the console's list, with their counters.
    pub async fn admin_list_batches(
        &self,
        filter: &AdminBatchFilter,
    ) -> Result<Vec<(Batch, BatchStats)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.admin_list_batches(filter).await,
            Store::Postgres(s) => s.guarded(s.admin_list_batches(filter)).await,
        }
    }

    /// A batch's issues and redemptions per time bucket, counted on the
    /// `(batch_id, issued_at)` and `(batch_id, redeemed_at)` indexes alone.
    pub async fn batch_activity(
        &self,
        batch_id: i64,
        window: ActivityWindow,
    ) -> Result<BucketCounts, StoreError> {
        match self {
            Store::Sqlite(s) => s.batch_activity(batch_id, window).await,
            Store::Postgres(s) => s.guarded(s.batch_activity(batch_id, window)).await,
        }
    }

    /// The latest batches created, coupons issued and coupon changes, newest first.
    pub async fn recent_activity(&self, limit: i64) -> Result<Vec<ActivityEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.recent_activity(limit).await,
            Store::Postgres(s) => s.guarded(s.recent_activity(limit)).await,
        }
    }

    /// Creates an API key at most once per idempotency claim: the key and a record of
    /// it (its id, name, scope and display prefix; never the secret) commit together.
    pub async fn create_api_key_once(
        &self,
        claim: IdempotencyClaim,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<KeyCreation, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_api_key_once(claim, key, now).await,
            Store::Postgres(s) => s.guarded(s.create_api_key_once(claim, key, now)).await,
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Store::Sqlite(s) => s.pool_stats(),
            Store::Postgres(s) => s.pool_stats(),
        }
    }

    /// Whether the database answers; for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.guarded(s.ping()).await,
        }
    }

    /// Closes connections; pending writes finish first.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// Readiness: the newest migration applied must be the newest this binary carries.
fn check_schema(
    applied: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let expected = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    if applied == Some(expected) {
        Ok(())
    } else {
        Err(StoreError::SchemaOutOfDate { applied, expected })
    }
}

/// `%`, `_` and `\` in a LIKE pattern made literal.
pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How a batch's capacity is split over counter rows, so that concurrent issues of one
/// batch lock different rows. Shard `i` of `n` gets `total / n`, the first `total % n`
/// one more.
pub(crate) fn shard_quotas(total_limit: i64, max_shards: i64) -> Vec<i64> {
    let n = total_limit.clamp(1, max_shards.max(1));
    let base = total_limit / n;
    let extra = total_limit % n;
    (0..n).map(|i| base + i64::from(i < extra)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_quotas_add_up() {
        for total in [1, 2, 7, 15, 16, 17, 1000, 1_000_003] {
            let quotas = shard_quotas(total, 16);
            assert_eq!(quotas.iter().sum::<i64>(), total);
            assert!(quotas.iter().all(|q| *q >= 1));
            assert!(quotas.len() <= 16);
        }
    }
}
