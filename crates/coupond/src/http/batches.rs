//! Batch routes: the seed's create, and listing, stats, activation and bulk codes.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;

use super::auth::{Authorized, BatchAccess, ReadAccess};
use super::error::ApiError;
use super::extract::{IdempotencyKey, JsonBody};
use super::openapi::{CodeJobBody, ErrorEnvelope, IdempotencyKeyHeader, NewBatchBody};
use super::render::{next_cursor, BatchList, BatchView, JobView};
use super::{query_pairs, write_once, AppState};
use crate::domain::coupon::{parse_page, Query};
use crate::domain::{batch, job, FieldErrors};
use crate::idempotency::fingerprint;
use crate::storage::{BatchFilter, Command, StoreError};

/// Rows read per database round trip while streaming a CSV export.
const EXPORT_PAGE: i64 = 5_000;

/// Create a coupon batch.
#[utoipa::path(
    post, path = "/v1/coupon-batches/", tag = "batches",
    security(("api_key" = [])), params(IdempotencyKeyHeader),
    request_body(content = NewBatchBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The batch.", body = BatchView),
    ),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<BatchAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let new_batch = batch::parse_new_batch(&body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    write_once(
        &state,
        &caller,
        key,
        fingerprint,
        Command::CreateBatch(new_batch),
    )
    .await
}

/// List batches, newest first, with their counters.
#[utoipa::path(
    get, path = "/v1/coupon-batches/", tag = "batches",
    security(("api_key" = [])),
    params(
        ("active" = Option<bool>, Query, description = "Only active (`true`) or deactivated (`false`) batches."),
        ("name" = Option<String>, Query, description = "Batches whose name contains this, in any case."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200; 50 by default."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of batches.", body = BatchList),
    ),
)]
pub async fn list_batches(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref())?;
    let query = Query::new(&pairs);
    let mut errors = FieldErrors::default();
    let page = parse_page(&query, &mut errors);
    let active = match query.get("active") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            errors.add("active", "must be true or false");
            None
        }
    };
    let name = query.get("name").map(str::to_owned);
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > batch::MAX_NAME_CHARS)
    {
        errors.add(
            "name",
            format!("must be at most {} characters", batch::MAX_NAME_CHARS),
        );
    } else if name
        .as_ref()
        .is_some_and(|n| n.chars().any(char::is_control))
    {
        // No batch name holds one (names are checked at creation), and PostgreSQL
        // cannot compare text with a NUL in it.
        errors.add("name", "must not contain control characters");
    }
    let filter = errors
        .into_result(BatchFilter { page, active, name })
        .map_err(ApiError::validation)?;
    let batches = state.store.list_batches(&filter).await?;
    let next = next_cursor(batches.last().map(|(b, _)| b.id), batches.len(), page.limit);
    let items = batches
        .iter()
        .map(|(batch, stats)| BatchView::new(batch, *stats))
        .collect();
    Ok(Json(BatchList {
        items,
        next_cursor: next,
    })
    .into_response())
}

fn id_param(field: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| {
            let mut errors = FieldErrors::default();
            errors.add(field, "must be a positive integer");
            ApiError::validation(errors)
        })
}

fn batch_not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "BATCH_NOT_FOUND",
        "batch not found",
    )
}

/// One batch, with its counters.
#[utoipa::path(
    get, path = "/v1/coupon-batches/{id}/", tag = "batches",
    security(("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "The batch's id.")),
    responses(
        (status = 200, description = "The batch and its stats.", body = BatchView),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope),
    ),
)]
pub async fn get_batch(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param("id", &id)?;
    let (batch, stats) = state
        .store
        .get_batch(id)
        .await?
        .ok_or_else(batch_not_found)?;
    Ok(Json(BatchView::new(&batch, stats)).into_response())
}

async fn set_active(
    state: AppState,
    caller: crate::keys::Caller,
    key: String,
    uri: Uri,
    id: String,
    body: serde_json::Value,
    active: bool,
) -> Result<Response, ApiError> {
    let batch_id = id_param("id", &id)?;
    // No fields are needed, but a body there is must be an object, as everywhere.
    crate::domain::input::Fields::new(&body)
        .errors
        .into_result(())
        .map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    write_once(
        &state,
        &caller,
        key,
        fingerprint,
        Command::SetBatchActive { batch_id, active },
    )
    .await
}

/// Switch a batch on again.
#[utoipa::path(
    post, path = "/v1/coupon-batches/{id}/activate/", tag = "batches",
    security(("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "The batch's id."), IdempotencyKeyHeader),
    responses(
        (status = 200, description = "The batch, active.", body = BatchView),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope),
    ),
)]
pub async fn activate_batch(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<BatchAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    set_active(state, caller, key, uri, id, body, true).await
}

/// Switch a batch off: issue and redeem answer `409 BATCH_INACTIVE` until it is
/// activated again.
#[utoipa::path(
    post, path = "/v1/coupon-batches/{id}/deactivate/", tag = "batches",
    security(("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "The batch's id."), IdempotencyKeyHeader),
    responses(
        (status = 200, description = "The batch, inactive.", body = BatchView),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope),
    ),
)]
pub async fn deactivate_batch(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<BatchAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    set_active(state, caller, key, uri, id, body, false).await
}

/// Pre-generate codes nobody holds yet (printed vouchers). They count against the
/// batch's `total_limit` at once; the job runs in the background.
#[utoipa::path(
    post, path = "/v1/coupon-batches/{id}/codes/", tag = "batches",
    security(("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "The batch's id."), IdempotencyKeyHeader),
    request_body(content = CodeJobBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The job, running; follow it at `/v1/coupon-batches/{id}/codes/{job_id}/`.", body = JobView),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope),
        (status = 409, description = "`BATCH_LIMIT_REACHED`: fewer than `count` coupons remain.", body = ErrorEnvelope),
    ),
)]
pub async fn start_code_job(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<BatchAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let batch_id = id_param("id", &id)?;
    let request = job::parse_code_job(batch_id, &body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    let response = write_once(
        &state,
        &caller,
        key,
        fingerprint,
        Command::StartCodeJob(request),
    )
    .await?;
    state.code_jobs.wake();
    Ok(response)
}

/// How far a bulk-code job got.
#[utoipa::path(
    get, path = "/v1/coupon-batches/{id}/codes/{job_id}/", tag = "batches",
    security(("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The batch's id."),
        ("job_id" = i64, Path, minimum = 1, description = "The job's id."),
    ),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "`NOT_FOUND`: no such job for this batch.", body = ErrorEnvelope),
    ),
)]
pub async fn get_code_job(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let batch_id = id_param("id", &id)?;
    let job_id = id_param("job_id", &job_id)?;
    let job = state
        .store
        .get_code_job(job_id)
        .await?
        .filter(|j| j.batch_id == batch_id)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(JobView::from(&job)).into_response())
}

/// Every coupon of a batch as CSV (`code,status,issued_to,created_at`), in the order
/// they were made, streamed.
#[utoipa::path(
    get, path = "/v1/coupon-batches/{id}/codes.csv", tag = "batches",
    security(("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "The batch's id.")),
    responses(
        (status = 200, description = "The CSV.", content_type = "text/csv", body = String),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope),
    ),
)]
pub async fn export_codes(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let batch_id = id_param("id", &id)?;
    state
        .store
        .get_batch(batch_id)
        .await?
        .ok_or_else(batch_not_found)?;
    let store = state.store.clone();
    let now = crate::domain::now();
    // Keyset pages: memory stays flat however many codes the batch has.
    let pages = futures_util::stream::unfold(Some(0i64), move |after| {
        let store = store.clone();
        async move {
            let after = after?;
            let page = store.batch_coupons(batch_id, after, EXPORT_PAGE).await;
            let (chunk, next) = match page {
                // The header alone for a batch without coupons.
                Ok(coupons) if coupons.is_empty() && after > 0 => return None,
                Ok(coupons) => {
                    let next = coupons.last().map(|c| c.id);
                    let mut csv = String::with_capacity(coupons.len() * 48 + 40);
                    if after == 0 {
                        csv.push_str("code,status,issued_to,created_at\n");
                    }
                    for c in &coupons {
                        csv.push_str(&csv_line(c, now));
                    }
                    (Ok::<Bytes, StoreError>(Bytes::from(csv)), next)
                }
                Err(e) => {
                    tracing::error!(error = %e, batch_id, "code export failed midway");
                    (Err(e), None)
                }
            };
            Some((chunk, next))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"batch-{batch_id}-codes.csv\""),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}

fn csv_line(c: &crate::domain::Coupon, now: time::OffsetDateTime) -> String {
    let created = c
        .created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "{},{},{},{}\n",
        c.code,
        c.status_at(now).as_str(),
        csv_field(c.issued_to.as_deref().unwrap_or("")),
        created
    )
}

/// A CSV field, quoted when it must be, and never starting a spreadsheet formula.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_safe() {
        assert_eq!(csv_field("u1"), "u1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
