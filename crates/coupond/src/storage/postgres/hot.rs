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
use crate::domain::code::{Alphabet, CodeFormat, MAX_CODE_ATTEMPTS};
use crate::domain::coupon::{discount_for, ISSUE_REJECTIONS, REDEEM_REJECTIONS};
use crate::domain::{
    Coupon, CouponStatus, Discount, DiscountType, IssueRequest, RedeemRequest, Rejection,
};
use crate::faults::FaultAction;
use crate::storage::{
    Command, Effect, IdempotencyClaim, IdempotencyRecord, Render, Replay, StoreError,
    StoredResponse, WriteOutcome, WriteRequest,
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
        actor,
        command,
        render,
        now,
    } = request;
    let call = Call {
        store,
        claim: &claim,
        actor,
        render,
        now,
    };
    let mut stale = 0;
    loop {
        let result = match &command {
            Command::Issue(issue) => issue_coupon(&call, issue).await,
            Command::Redeem(redeem) => redeem_coupon(&call, redeem).await,
            _ => return Err(StoreError::Internal("general command on the hot path")),
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

/// What every hot write needs besides its own request.
struct Call<'a> {
    store: &'a PgStore,
    claim: &'a IdempotencyClaim,
    actor: Option<i64>,
    render: Render,
    now: OffsetDateTime,
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
        now: OffsetDateTime,
        success: Option<(&'static str, Effect)>,
        rejections: &[Rejection],
    ) -> Self {
        let mut outcomes = Outcomes {
            names: Vec::with_capacity(rejections.len() + 1),
            statuses: Vec::with_capacity(rejections.len() + 1),
            bodies: Vec::with_capacity(rejections.len() + 1),
        };
        if let Some((name, effect)) = success {
            outcomes.push(name, render(&Ok(effect), now));
        }
        for rejection in rejections {
            outcomes.push(rejection.code(), render(&Err(*rejection), now));
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
                        WriteOutcome::Replayed(Replay::Response(StoredResponse {
                            status: u16::try_from(status).unwrap_or(500),
                            body,
                        }))
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
        std::sync::Arc::new(record).answer(&claim.fingerprint, now)
    }
}

const RECORD_COLUMNS: &str = "r.fingerprint, r.response_status, r.response_body, \
                              r.created_at AS record_created_at, r.expires_at AS record_expires_at";

#[derive(FromRow)]
struct IssueSnapshot {
    #[sqlx(flatten)]
    record: RecordColumns,
    next_id: Option<i64>,
    code_length: Option<i32>,
    code_prefix: Option<String>,
    code_alphabet: Option<String>,
}

impl IssueSnapshot {
    /// The batch's code format; the seed's when there is no such batch (the function
    /// will answer BATCH_NOT_FOUND, and no code is used).
    fn code_format(&self) -> CodeFormat {
        let default = CodeFormat::default();
        CodeFormat {
            length: self
                .code_length
                .and_then(|l| usize::try_from(l).ok())
                .unwrap_or(default.length),
            prefix: self.code_prefix.clone().unwrap_or(default.prefix),
            alphabet: self
                .code_alphabet
                .as_deref()
                .and_then(Alphabet::parse)
                .unwrap_or(default.alphabet),
        }
    }
}

async fn issue_coupon(call: &Call<'_>, request: &IssueRequest) -> Result<WriteOutcome, StoreError> {
    let Call {
        store,
        claim,
        actor,
        render,
        now,
    } = *call;
    // The id is drawn here, so the response can be rendered before the write; one
    // drawn for a request that turns out to be a replay or a rejection is a gap, as
    // any sequence has.
    let mut conn = store.acquire().await?;
    let snapshot: IssueSnapshot = sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS}, \
             CASE WHEN r.expires_at IS NULL OR r.expires_at <= $3 \
                  THEN nextval('coupons_id_seq') END AS next_id, \
             b.code_length, b.code_prefix, b.code_alphabet \
         FROM (SELECT 1) AS one \
         LEFT JOIN idempotency_records r ON r.scope = $1 AND r.key = $2 \
         LEFT JOIN coupon_batches b ON b.id = $4"
    ))
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(now)
    .bind(request.batch_id)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(outcome) = snapshot.record.answer(claim, now) {
        return Ok(outcome);
    }
    let id = snapshot
        .next_id
        .ok_or(StoreError::Internal("no coupon id drawn"))?;
    let format = snapshot.code_format();

    for _ in 0..MAX_CODE_ATTEMPTS {
        let coupon = Coupon::issued(
            id,
            request.batch_id,
            format.generate(),
            &request.user_id,
            now,
        );
        let code = coupon.code.clone();
        let outcomes = Outcomes::render(
            render,
            now,
            Some(("ISSUED", Effect::Issued(coupon))),
            ISSUE_REJECTIONS,
        );
        let query = sqlx::query_as(
            "SELECT outcome, fingerprint, response_status, response_body FROM coupond_issue(\
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
        .bind(actor)
        .bind(&outcomes.names)
        .bind(&outcomes.statuses)
        .bind(&outcomes.bodies);
        match run(store, &mut conn, &claim.key, query).await {
            // Astronomically rare: the statement was undone, try another code.
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
    discount_type: Option<String>,
    amount: Option<i64>,
    percent: Option<i64>,
    max_discount: Option<i64>,
}

impl RedeemSnapshot {
    fn coupon(&self) -> Option<Coupon> {
        let mut coupon = Coupon::issued(
            self.id?,
            self.batch_id?,
            self.code.clone()?,
            "",
            self.created_at?,
        );
        coupon.status = CouponStatus::parse(self.status.as_deref()?)?;
        coupon.issued_to = self.issued_to.clone();
        coupon.issued_at = self.issued_at;
        Some(coupon)
    }

    fn discount(&self) -> Option<Discount> {
        Some(match DiscountType::parse(self.discount_type.as_deref()?)? {
            DiscountType::Fixed => Discount::Fixed {
                amount: self.amount?,
            },
            DiscountType::Percent => Discount::Percent {
                percent: self.percent?,
                cap: self.max_discount,
            },
        })
    }
}

async fn redeem_coupon(
    call: &Call<'_>,
    request: &RedeemRequest,
) -> Result<WriteOutcome, StoreError> {
    let Call {
        store,
        claim,
        actor,
        render,
        now,
    } = *call;
    let mut conn = store.acquire().await?;
    let snapshot: RedeemSnapshot = sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS}, c.id, c.batch_id, c.code, c.status, c.issued_to, \
                c.issued_at, c.created_at, b.discount_type, b.amount, b.percent, b.max_discount \
         FROM (SELECT 1) AS one \
         LEFT JOIN idempotency_records r ON r.scope = $1 AND r.key = $2 \
         LEFT JOIN coupons c ON c.code = $3 \
         LEFT JOIN coupon_batches b ON b.id = c.batch_id"
    ))
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&request.code)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(outcome) = snapshot.record.answer(claim, now) {
        return Ok(outcome);
    }
    // What a redemption leaves alone never changes once a coupon exists, and a batch's
    // discount never changes, so the success response rendered from this snapshot is
    // the one the write produces.
    let discount = snapshot
        .discount()
        .and_then(|d| discount_for(d, request.order_amount));
    let success = snapshot.coupon().map(|mut coupon| {
        coupon.redeem(request, discount, now);
        ("REDEEMED", Effect::Redeemed(coupon))
    });
    let outcomes = Outcomes::render(render, now, success, REDEEM_REJECTIONS);
    let query = sqlx::query_as(
        "SELECT outcome, fingerprint, response_status, response_body FROM coupond_redeem(\
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.fingerprint)
    .bind(now)
    .bind(claim.expires_at)
    .bind(&request.code)
    .bind(&request.user_id)
    .bind(&request.order_id)
    .bind(request.order_amount)
    .bind(discount)
    .bind(actor)
    .bind(&outcomes.names)
    .bind(&outcomes.statuses)
    .bind(&outcomes.bodies);
    run(store, &mut conn, &claim.key, query)
        .await?
        .into_outcome(&outcomes, claim)
}

/// Runs one hot statement as its own transaction. With fault points configured (tests
/// only) it runs inside an explicit transaction instead, so that a failure or a pause
/// can be placed after the write and before the commit.
async fn run(
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
