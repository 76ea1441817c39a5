//! Batches: the list, one batch (settings, stats, chart, coupons), the create form,
//! and activation.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Map, Value};

use super::actions::{self, form_idem_key, new_idem_key, notice_from_query, Outcome};
use super::session::{Form, Session};
use super::templates::{
    render, BatchPage, BatchesPage, ButtonForm, Choice, Fact, Field, Layout, NewBatchPage, Notice,
};
use super::views::{
    chart_window, discount_label, fmt_count, fmt_opt_time, fmt_time, BatchRow, Chart, CouponRow,
};
use super::{Admin, AdminError};
use crate::domain::batch::{self, MAX_NAME_CHARS};
use crate::domain::coupon::{parse_page, Query};
use crate::domain::{Batch, FieldErrors, ListFilter};
use crate::http::render::next_cursor;
use crate::storage::{AdminBatchFilter, BatchState, Command};

/// Rows per page of the console's lists.
pub const PAGE: i64 = 25;

const STATES: &[(&str, &str)] = &[
    ("", "All batches"),
    ("active", "Active"),
    ("inactive", "Deactivated"),
    ("expired", "Expired"),
];

/// A positive id from the path, or the page does not exist.
pub fn path_id(raw: &str, what: &str) -> Result<i64, AdminError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| AdminError::not_found(what))
}

/// `limit` (25 unless given) and `cursor`, checked as the API checks them.
pub fn page_of(
    pairs: &[(String, String)],
    errors: &mut FieldErrors,
) -> crate::domain::coupon::Page {
    let mut with_limit: Vec<(String, String)> = pairs.to_vec();
    if !pairs.iter().any(|(k, _)| k == "limit") {
        with_limit.push(("limit".to_owned(), PAGE.to_string()));
    }
    parse_page(&Query::new(&with_limit), errors)
}

/// The URL of the next page: the same query with the cursor after `last_id`.
pub fn next_url(path: &str, keep: &[(&str, &str)], cursor: Option<String>) -> Option<String> {
    let cursor = cursor?;
    let mut pairs: Vec<(&str, &str)> = keep
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .copied()
        .collect();
    pairs.push(("cursor", &cursor));
    Some(format!(
        "{path}?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    ))
}

pub fn error_lines(errors: &FieldErrors) -> Vec<String> {
    errors.0.iter().map(|(f, r)| format!("{f}: {r}")).collect()
}

pub async fn list(
    State(admin): State<Admin>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let query = Query::new(&pairs);
    let mut errors = FieldErrors::default();
    let page = page_of(&pairs, &mut errors);
    let state_raw = query.get("state").unwrap_or("");
    let state = match state_raw {
        "" => None,
        "active" => Some(BatchState::Active),
        "inactive" => Some(BatchState::Inactive),
        "expired" => Some(BatchState::Expired),
        _ => {
            errors.add("state", "must be one of active, inactive, expired");
            None
        }
    };
    let q = query.get("q").unwrap_or("").trim().to_owned();
    if q.chars().count() > MAX_NAME_CHARS {
        errors.add(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        );
    } else if q.chars().any(char::is_control) {
        errors.add("name", "must not contain control characters");
    }
    let now = crate::domain::now();
    let (batches, next) = if errors.is_empty() {
        let batches = admin
            .app
            .store
            .admin_list_batches(&AdminBatchFilter {
                page,
                state,
                name: (!q.is_empty()).then(|| q.clone()),
                now,
            })
            .await?;
        let cursor = next_cursor(batches.last().map(|(b, _)| b.id), batches.len(), page.limit);
        (batches, cursor)
    } else {
        (Vec::new(), None)
    };
    let page = BatchesPage {
        layout: Layout::new(&session, "Batches", "batches").with_notice(notice_from_query(&pairs)),
        states: Choice::list(STATES, state_raw),
        next_url: next_url("/admin/batches", &[("q", &q), ("state", state_raw)], next),
        q,
        batches: batches
            .iter()
            .map(|(b, s)| BatchRow::new(b, *s, now))
            .collect(),
        errors: error_lines(&errors),
    };
    Ok(render(StatusCode::OK, &page))
}

fn facts(b: &Batch) -> Vec<Fact> {
    let code = &b.code_format;
    let mut code_text = format!(
        "{} random {} characters",
        code.length,
        code.alphabet.as_str()
    );
    if !code.prefix.is_empty() {
        code_text.push_str(&format!(" after “{}”", code.prefix));
    }
    vec![
        Fact {
            label: "Discount",
            value: discount_label(b),
        },
        Fact {
            label: "Total limit",
            value: fmt_count(b.total_limit),
        },
        Fact {
            label: "Per-user limit",
            value: fmt_count(b.per_user_limit),
        },
        Fact {
            label: "Who may redeem",
            value: match b.redeem_policy {
                crate::domain::RedeemPolicy::Anyone => "anyone holding the code".to_owned(),
                crate::domain::RedeemPolicy::OwnerOnly => {
                    "only the user it was issued to".to_owned()
                }
            },
        },
        Fact {
            label: "Starts",
            value: b.starts_at.map_or_else(|| "at once".to_owned(), fmt_time),
        },
        Fact {
            label: "Expires",
            value: fmt_time(b.expires_at),
        },
        Fact {
            label: "Minimum order",
            value: b
                .min_order_amount
                .map_or_else(|| "none".to_owned(), fmt_count),
        },
        Fact {
            label: "Currency",
            value: b.currency.clone().unwrap_or_else(|| "not set".to_owned()),
        },
        Fact {
            label: "Codes",
            value: code_text,
        },
        Fact {
            label: "Created",
            value: fmt_opt_time(Some(b.created_at)),
        },
    ]
}

pub async fn detail(
    State(admin): State<Admin>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let id = path_id(&id, "batch")?;
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let (batch, stats) = admin
        .app
        .store
        .get_batch(id)
        .await?
        .ok_or_else(|| AdminError::not_found("batch"))?;
    let now = crate::domain::now();
    let window = chart_window(&batch, now);
    let counts = admin.chart_counts(id, stats.issued, window).await?;
    let mut errors = FieldErrors::default();
    let page = page_of(&pairs, &mut errors);
    let page = if errors.is_empty() {
        page
    } else {
        crate::domain::coupon::Page {
            limit: PAGE,
            after_id: None,
        }
    };
    let coupons = admin
        .app
        .store
        .list_coupons(&ListFilter {
            batch_id: Some(id),
            limit: page.limit,
            after_id: page.after_id,
            now,
            ..ListFilter::default()
        })
        .await?;
    let next = next_cursor(coupons.last().map(|c| c.id), coupons.len(), page.limit);
    let toggle = if batch.active {
        ButtonForm {
            action: format!("/admin/batches/{id}/deactivate"),
            idem: new_idem_key(),
            label: "Deactivate",
            class: "danger",
        }
    } else {
        ButtonForm {
            action: format!("/admin/batches/{id}/activate"),
            idem: new_idem_key(),
            label: "Activate",
            class: "primary",
        }
    };
    let page = BatchPage {
        layout: Layout::new(&session, batch.name.clone(), "batches")
            .with_notice(notice_from_query(&pairs)),
        facts: facts(&batch),
        chart: Chart::new(window, &counts),
        coupons: coupons.iter().map(|c| CouponRow::new(c, now)).collect(),
        next_url: next_url(&format!("/admin/batches/{id}"), &[], next),
        batch: BatchRow::new(&batch, stats, now),
        toggle,
    };
    Ok(render(StatusCode::OK, &page))
}

/// A field of the create form: (name, label, input kind, required, help, default,
/// choices).
type Spec = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const FIELDS: &[Spec] = &[
    (
        "name",
        "Name",
        "text",
        true,
        "At most 80 characters.",
        "",
        &[],
    ),
    (
        "discount_type",
        "Discount type",
        "select",
        true,
        "",
        "percent",
        &[
            ("percent", "Percent of the order"),
            ("fixed", "Fixed amount"),
        ],
    ),
    (
        "percent",
        "Percent",
        "number",
        false,
        "1 to 100, for a percent discount.",
        "",
        &[],
    ),
    (
        "amount",
        "Amount",
        "number",
        false,
        "In minor units (cents), for a fixed discount.",
        "",
        &[],
    ),
    (
        "max_discount",
        "Largest discount",
        "number",
        false,
        "Optional cap of a percent discount, minor units.",
        "",
        &[],
    ),
    (
        "total_limit",
        "Total limit",
        "number",
        true,
        "Coupons the batch may hand out in all.",
        "",
        &[],
    ),
    (
        "per_user_limit",
        "Per-user limit",
        "number",
        false,
        "Coupons one user may hold.",
        "1",
        &[],
    ),
    (
        "expires_at",
        "Expires at (UTC)",
        "datetime-local",
        true,
        "",
        "",
        &[],
    ),
    (
        "starts_at",
        "Starts at (UTC)",
        "datetime-local",
        false,
        "Optional: nothing is issued before.",
        "",
        &[],
    ),
    (
        "redeem_policy",
        "Who may redeem",
        "select",
        false,
        "",
        "anyone",
        &[
            ("anyone", "Anyone holding the code"),
            ("owner_only", "Only the user it was issued to"),
        ],
    ),
    (
        "min_order_amount",
        "Minimum order",
        "number",
        false,
        "Optional, minor units.",
        "",
        &[],
    ),
    (
        "currency",
        "Currency",
        "text",
        false,
        "Optional ISO 4217 code, e.g. EUR.",
        "",
        &[],
    ),
    (
        "code_length",
        "Code length",
        "number",
        false,
        "Random characters per code.",
        "10",
        &[],
    ),
    (
        "code_prefix",
        "Code prefix",
        "text",
        false,
        "Optional: letters, digits and '-'.",
        "",
        &[],
    ),
    (
        "code_alphabet",
        "Code alphabet",
        "select",
        false,
        "",
        "standard",
        &[
            ("standard", "A-Z and 0-9"),
            ("unambiguous", "Without 0, O, 1, I, L"),
        ],
    ),
];

/// A `datetime-local` value (a wall-clock time, taken as UTC) as RFC 3339; anything
/// else as typed, for the API's rule to judge.
fn utc_timestamp(raw: &str) -> String {
    let shape: String = raw
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    match shape.as_str() {
        "9999-99-99T99:99" => format!("{raw}:00Z"),
        "9999-99-99T99:99:99" | "9999-99-99T99:99:99.999" => format!("{raw}Z"),
        _ => raw.to_owned(),
    }
}

/// The JSON body the API would get for this form: empty fields left out, numbers as
/// numbers (what is not a number stays text, and the API's rule says so).
fn batch_body(form: &Form) -> Value {
    let mut body = Map::new();
    for (name, _, kind, ..) in FIELDS {
        let raw = form.get(name).unwrap_or("").trim();
        if raw.is_empty() {
            continue;
        }
        let value = match *kind {
            "number" => raw
                .parse::<i64>()
                .map_or_else(|_| Value::String(raw.to_owned()), Value::from),
            "datetime-local" => Value::String(utc_timestamp(raw)),
            _ => Value::String(raw.to_owned()),
        };
        body.insert((*name).to_owned(), value);
    }
    Value::Object(body)
}

fn fields(form: Option<&Form>, errors: &FieldErrors) -> Vec<Field> {
    FIELDS
        .iter()
        .map(|(name, label, kind, required, help, default, choices)| {
            let value = form
                .map(|f| f.get(name).unwrap_or("").to_owned())
                .unwrap_or_else(|| (*default).to_owned());
            Field {
                name,
                label,
                kind,
                choices: Choice::list(choices, &value),
                value,
                help,
                required: *required,
                error: errors.0.get(*name).cloned(),
            }
        })
        .collect()
}

fn new_batch_page(
    session: &Session,
    idem: String,
    form: Option<&Form>,
    errors: &FieldErrors,
    notice: Option<Notice>,
) -> NewBatchPage {
    let known = |f: &str| FIELDS.iter().any(|(name, ..)| *name == f);
    NewBatchPage {
        layout: Layout::new(session, "New batch", "batches").with_notice(notice),
        idem,
        fields: fields(form, errors),
        errors: errors
            .0
            .iter()
            .filter(|(f, _)| !known(f))
            .map(|(f, r)| format!("{f}: {r}"))
            .collect(),
    }
}

pub async fn new_form(session: Session) -> Response {
    let page = new_batch_page(
        &session,
        new_idem_key(),
        None,
        &FieldErrors::default(),
        None,
    );
    render(StatusCode::OK, &page)
}

pub async fn create(
    State(admin): State<Admin>,
    session: Session,
    form: Form,
) -> Result<Response, AdminError> {
    session.check_csrf(&form)?;
    let idem = form_idem_key(&form)?;
    let body = batch_body(&form);
    let new_batch = match batch::parse_new_batch(&body) {
        Ok(new_batch) => new_batch,
        Err(errors) => {
            // Nothing was stored: the same form (and key) may be sent again, fixed.
            let notice = Notice::error(format!(
                "The batch was not created: {} field{} to fix.",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            ));
            let page = new_batch_page(&session, idem, Some(&form), &errors, Some(notice));
            return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page));
        }
    };
    let outcome = actions::run(
        &admin,
        &session,
        idem,
        "/v1/coupon-batches/",
        &body,
        Command::CreateBatch(new_batch),
    )
    .await?;
    match outcome {
        Outcome::Done { body, replayed } => {
            let id = body["id"].as_i64().ok_or_else(AdminError::internal)?;
            let query = if replayed {
                "done=created&replayed=1"
            } else {
                "done=created"
            };
            Ok(Redirect::to(&format!("/admin/batches/{id}?{query}")).into_response())
        }
        Outcome::Mismatch => {
            let notice = Notice::error(
                "This form had already created a batch, so nothing was done now. The form \
                 is renewed: check the values and send it again to create another batch.",
            );
            let page = new_batch_page(
                &session,
                new_idem_key(),
                Some(&form),
                &FieldErrors::default(),
                Some(notice),
            );
            Ok(render(StatusCode::CONFLICT, &page))
        }
        other => actions::after("/admin/batches", other, "created"),
    }
}

async fn set_active(
    admin: Admin,
    session: Session,
    id: String,
    form: Form,
    active: bool,
) -> Result<Response, AdminError> {
    session.check_csrf(&form)?;
    let idem = form_idem_key(&form)?;
    let batch_id = path_id(&id, "batch")?;
    let verb = if active { "activate" } else { "deactivate" };
    let outcome = actions::run(
        &admin,
        &session,
        idem,
        &format!("/v1/coupon-batches/{batch_id}/{verb}/"),
        &json!({}),
        Command::SetBatchActive { batch_id, active },
    )
    .await?;
    if let Outcome::Refused { code, .. } = &outcome {
        if code == "BATCH_NOT_FOUND" {
            return Err(AdminError::not_found("batch"));
        }
    }
    actions::after(
        &format!("/admin/batches/{batch_id}"),
        outcome,
        if active { "activated" } else { "deactivated" },
    )
}

pub async fn activate(
    State(admin): State<Admin>,
    session: Session,
    Path(id): Path<String>,
    form: Form,
) -> Result<Response, AdminError> {
    set_active(admin, session, id, form, true).await
}

pub async fn deactivate(
    State(admin): State<Admin>,
    session: Session,
    Path(id): Path<String>,
    form: Form,
) -> Result<Response, AdminError> {
    set_active(admin, session, id, form, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_become_utc() {
        assert_eq!(utc_timestamp("2030-01-02T03:04"), "2030-01-02T03:04:00Z");
        assert_eq!(utc_timestamp("2030-01-02T03:04:05"), "2030-01-02T03:04:05Z");
        assert_eq!(utc_timestamp("soon"), "soon");
        assert_eq!(
            utc_timestamp("2030-01-02T03:04:05+02:00"),
            "2030-01-02T03:04:05+02:00"
        );
    }
}
