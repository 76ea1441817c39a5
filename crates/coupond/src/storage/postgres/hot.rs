//! Issue and redeem, the writes a flash sale hammers, in two round trips: a plain read
//! (the idempotency record, and what the responses need), then one call of a SQL
//! function that claims the key, applies the rules under row locks, writes the effect
//! and stores the response, in the single transaction of that statement.
//!
//! The responses are rendered here, before the call, one per outcome the command can
//! reach; the function picks the one for the outcome it reached. So the bytes stored
//! for replay are exactly the bytes this process renders, and nothing about the wire
//! format lives in SQL.

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{Connection, FromRow, PgConnection, Postgres};
use time::OffsetDateTime;

use super::PgStore;
use crate::domain::code::{generate_code, MAX_CODE_ATTEMPTS};
use crate::domain::coupon::{ISSUE_REJECTIONS, REDEEM_REJECTIONS};
use crate::domain::{Coupon, CouponStatus, IssueRequest, RedeemRequest, Rejection};
use crate::faults::FaultAction;
use crate::storage::{
    Command, Effect, IdempotencyClaim, IdempotencyRecord, Render, StoreError, StoredResponse,
    WriteOutcome, WriteRequest,
};

const UNIQUE_VIOLATION: &str = "23505";
/// Raised by `coupond_store_response` when the outcome reached was not rendered.
const UNFORESEEN_OUTCOME: &str = "CPD01";
const CODE_CONSTRAINT: &str = "coupons_code_key";
/// How many times a write is retried when its snapshot went stale under it.
const MAX_STALE_RETRIES: usize = 3;

pub(super) async fn execute(
    store: &PgStore,
    request: WriteRequest,
) -> Result<WriteOutcome, StoreError> {
    let WriteRequest {
        claim,
        command,
        render,
        now,
    } = request;
    let mut stale = 0;
    loop {
        let result = match &command {
            Command::Issue(issue) => issue_coupon(store, &claim, issue, render, now).await,
            Command::Redeem(redeem) => redeem_coupon(store, &claim, redeem, render, now).await,
            Command::CreateBatch(_) => {
                return Err(StoreError::Internal("general command on the hot path"))
            }
        };
        match result {
            Err(StoreError::Database(e)) if is_sqlstate(&e, UNFORESEEN_OUTCOME) => {
                stale += 1;
                if stale >= MAX_STALE_RETRIES {
                    return Err(StoreError::Database(e));
                }
            }
            other => return other,
        }
    }
}

/// The responses of every outcome, as parallel arrays for the SQL function.
struct Outcomes {
    names: Vec<&'static str>,
    statuses: Vec<i16>,
    bodies: Vec<Option<Vec<u8>>>,
}

impl Outcomes {
    fn render(
        render: Render,
        success: Option<(&'static str, Effect)>,
        rejections: &[Rejection],
    ) -> Self {
        let mut outcomes = Outcomes {
            names: Vec::with_capacity(rejections.len() + 1),
            statuses: Vec::with_capacity(rejections.len() + 1),
            bodies: Vec::with_capacity(rejections.len() + 1),
        };
        if let Some((name, effect)) = success {
            outcomes.push(name, render(&Ok(effect)));
        }
        for rejection in rejections {
            outcomes.push(rejection.code(), render(&Err(*rejection)));
        }
        outcomes
    }

    fn push(&mut self, name: &'static str, response: StoredResponse) {
        self.names.push(name);
        self.statuses
            .push(i16::try_from(response.status).unwrap_or(500));
        self.bodies.push(Some(response.body));
    }

    fn response(&self, name: &str) -> Option<StoredResponse> {
        let i = self.names.iter().position(|n| *n == name)?;
        Some(StoredResponse {
            status: u16::try_from(self.statuses[i]).ok()?,
            body: self.bodies[i].clone()?,
        })
    }
}

/// What the SQL functions answer.
#[derive(FromRow)]
struct Answer {
    outcome: String,
    fingerprint: Option<String>,
    response_status: Option<i16>,
    response_body: Option<Vec<u8>>,
}

impl Answer {
    fn into_outcome(
        self,
        outcomes: &Outcomes,
        claim: &IdempotencyClaim,
    ) -> Result<WriteOutcome, StoreError> {
        if self.outcome == "DUPLICATE" {
            // Another request with this key committed between our read and our claim.
            return Ok(
                match (self.fingerprint, self.response_status, self.response_body) {
                    (Some(fingerprint), Some(status), Some(body))
                        if fingerprint == claim.fingerprint =>
                    {
                        WriteOutcome::Replayed(StoredResponse {
                            status: u16::try_from(status).unwrap_or(500),
                            body,
                        })
                    }
                    (Some(_), Some(_), Some(_)) => WriteOutcome::FingerprintMismatch,
                    // Purged between the claim and the read: the client may simply retry.
                    _ => WriteOutcome::InProgress,
                },
            );
        }
        outcomes
            .response(&self.outcome)
            .map(WriteOutcome::Executed)
            .ok_or(StoreError::Internal(
                "the database reached an outcome nobody rendered",
            ))
    }
}

/// The idempotency record, if any, as read before the write.
#[derive(FromRow)]
struct RecordColumns {
    fingerprint: Option<String>,
    response_status: Option<i16>,
    response_body: Option<Vec<u8>>,
    record_created_at: Option<OffsetDateTime>,
    record_expires_at: Option<OffsetDateTime>,
}

impl RecordColumns {
    /// The answer a live record gives, or `None` when the command has to run.
    fn answer(&self, claim: &IdempotencyClaim, now: OffsetDateTime) -> Option<WriteOutcome> {
        let record = IdempotencyRecord {
            fingerprint: self.fingerprint.clone()?,
            response: StoredResponse {
                status: u16::try_from(self.response_status?).ok()?,
                body: self.response_body.clone()?,
            },
            created_at: self.record_created_at?,
            expires_at: self.record_expires_at?,
        };
        record.answer(&claim.fingerprint, now)
    }
}

const RECORD_COLUMNS: &str = "r.fingerprint, r.response_status, r.response_body, \
                              r.created_at AS record_created_at, r.expires_at AS record_expires_at";

#[derive(FromRow)]
struct IssueSnapshot {
    #[sqlx(flatten)]
    record: RecordColumns,
    next_id: Option<i64>,
}

async fn issue_coupon(
    store: &PgStore,
    claim: &IdempotencyClaim,
    request: &IssueRequest,
    render: Render,
    now: OffsetDateTime,
) -> Result<WriteOutcome, StoreError> {
    // The id is drawn here, so the response can be rendered before the write; one
    // drawn for a request that turns out to be a replay or a rejection is a gap, as
    // any sequence has.
    let mut conn = store.acquire().await?;
    let snapshot: IssueSnapshot = sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS}, \
             CASE WHEN r.expires_at IS NULL OR r.expires_at <= $3 \
                  THEN nextval('coupons_id_seq') END AS next_id \
         FROM (SELECT 1) AS one \
         LEFT JOIN idempotency_records r ON r.scope = $1 AND r.key = $2"
    ))
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(outcome) = snapshot.record.answer(claim, now) {
        return Ok(outcome);
    }
    let id = snapshot
        .next_id
        .ok_or(StoreError::Internal("no coupon id drawn"))?;

    for _ in 0..MAX_CODE_ATTEMPTS {
        let coupon = Coupon::issued(id, request.batch_id, generate_code(), &request.user_id, now);
        let code = coupon.code.clone();
        let outcomes = Outcomes::render(
            render,
            Some(("ISSUED", Effect::Issued(coupon))),
            ISSUE_REJECTIONS,
        );
        let query = sqlx::query_as(
            "SELECT outcome, fingerprint, response_status, response_body FROM coupond_issue(\
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&claim.scope)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .bind(now)
        .bind(claim.expires_at)
        .bind(request.batch_id)
        .bind(&request.user_id)
        .bind(id)
        .bind(&code)
        .bind(i32::from(rand::random::<u8>() % super::MAX_SHARDS as u8))
        .bind(&outcomes.names)
        .bind(&outcomes.statuses)
        .bind(&outcomes.bodies);
        match call(store, &mut conn, &claim.key, query).await {
            // Astronomically rare at 36^10 codes: the statement was undone, try another.
            Err(StoreError::Database(e)) if is_code_collision(&e) => continue,
            Err(e) => return Err(e),
            Ok(answer) => return answer.into_outcome(&outcomes, claim),
        }
    }
    Err(StoreError::CodeSpaceExhausted)
}

#[derive(FromRow)]
struct RedeemSnapshot {
    #[sqlx(flatten)]
    record: RecordColumns,
    id: Option<i64>,
    batch_id: Option<i64>,
    code: Option<String>,
    status: Option<String>,
    issued_to: Option<String>,
    issued_at: Option<OffsetDateTime>,
    created_at: Option<OffsetDateTime>,
}

impl RedeemSnapshot {
    fn coupon(&self) -> Option<Coupon> {
        Some(Coupon {
            id: self.id?,
            batch_id: self.batch_id?,
            code: self.code.clone()?,
            status: CouponStatus::parse(self.status.as_deref()?)?,
            issued_to: self.issued_to.clone(),
            issued_at: self.issued_at,
            redeemed_by: None,
            redeemed_at: None,
            order_id: None,
            created_at: self.created_at?,
        })
    }
}

async fn redeem_coupon(
    store: &PgStore,
    claim: &IdempotencyClaim,
    request: &RedeemRequest,
    render: Render,
    now: OffsetDateTime,
) -> Result<WriteOutcome, StoreError> {
    let mut conn = store.acquire().await?;
    let snapshot: RedeemSnapshot = sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS}, c.id, c.batch_id, c.code, c.status, c.issued_to, \
                c.issued_at, c.created_at \
         FROM (SELECT 1) AS one \
         LEFT JOIN idempotency_records r ON r.scope = $1 AND r.key = $2 \
         LEFT JOIN coupons c ON c.code = $3"
    ))
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&request.code)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(outcome) = snapshot.record.answer(claim, now) {
        return Ok(outcome);
    }
    // The fields a redemption leaves alone never change once a coupon exists, so the
    // success response rendered from this snapshot is the one the write produces.
    let success = snapshot.coupon().map(|mut coupon| {
        coupon.redeem(request, now);
        ("REDEEMED", Effect::Redeemed(coupon))
    });
    let outcomes = Outcomes::render(render, success, REDEEM_REJECTIONS);
    let query = sqlx::query_as(
        "SELECT outcome, fingerprint, response_status, response_body FROM coupond_redeem(\
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(now)
    .bind(claim.expires_at)
    .bind(&request.code)
    .bind(&request.user_id)
    .bind(&request.order_id)
    .bind(&outcomes.names)
    .bind(&outcomes.statuses)
    .bind(&outcomes.bodies);
    call(store, &mut conn, &claim.key, query)
        .await?
        .into_outcome(&outcomes, claim)
}

/// Runs one hot statement as its own transaction. With fault points configured (tests
/// only) it runs inside an explicit transaction instead, so that a failure or a pause
/// can be placed after the write and before the commit.
async fn call(
    store: &PgStore,
    conn: &mut PgConnection,
    key: &str,
    query: QueryAs<'_, Postgres, Answer, PgArguments>,
) -> Result<Answer, StoreError> {
    if !store.faults.armed() {
        return Ok(query.fetch_one(&mut *conn).await?);
    }
    let mut tx = conn.begin().await?;
    let answer = query.fetch_one(&mut *tx).await?;
    // The fault point sits between a write and its commit; a duplicate wrote nothing.
    let wrote = answer.outcome != "DUPLICATE";
    match if wrote {
        store.faults.before_commit(key)
    } else {
        FaultAction::Proceed
    } {
        FaultAction::Proceed => {}
        // Dropping the transaction rolls it back.
        FaultAction::Fail => return Err(StoreError::InjectedFault),
        FaultAction::Pause(d) => tokio::time::sleep(d).await,
    }
    tx.commit().await?;
    Ok(answer)
}

fn is_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}

fn is_code_collision(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some(UNIQUE_VIOLATION) && db.constraint() == Some(CODE_CONSTRAINT))
}
