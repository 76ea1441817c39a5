//! Coupons: search by code or user id, one coupon with its history, and cancel and
//! unredeem (each behind a confirmation, with a reason).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::actions::{self, form_idem_key, new_idem_key, notice_from_query};
use super::batches::{error_lines, next_url, PAGE};
use super::session::{Form, Session};
use super::templates::{
    render, Choice, ConfirmPage, CouponPage, CouponsPage, Fact, Hidden, Layout, ReasonField,
};
use super::views::{fmt_count, fmt_opt_time, key_label, or_dash, CouponRow, EventRow};
use super::{Admin, AdminError};
use crate::domain::code::code_to_look_up;
use crate::domain::coupon::{
    self, check_cancellable, history, parse_list_filter, Query, MAX_REASON_CHARS,
};
use crate::domain::{CouponStatus, FieldErrors};
use crate::http::render::next_cursor;
use crate::storage::{Command, CouponRecord};

const STATUSES: &[(&str, &str)] = &[
    ("", "Any status"),
    ("issued", "Issued"),
    ("redeemed", "Redeemed"),
    ("cancelled", "Cancelled"),
    ("expired", "Expired"),
];

pub async fn search(
    State(admin): State<Admin>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let query = Query::new(&pairs);
    let q = query.get("q").unwrap_or("").trim().to_owned();
    let status = query.get("status").unwrap_or("").to_owned();
    let cursor = query.get("cursor").unwrap_or("").to_owned();
    // The API's own list query, so its rules (and messages) hold here too.
    let mut list: Vec<(String, String)> = vec![("limit".into(), PAGE.to_string())];
    for (name, value) in [("user_id", &q), ("status", &status), ("cursor", &cursor)] {
        if !value.is_empty() {
            list.push((name.to_owned(), value.clone()));
        }
    }
    let now = crate::domain::now();
    let (coupons, errors, limit) = match parse_list_filter(&Query::new(&list)) {
        Ok(filter) => (
            admin.app.store.list_coupons(&filter).await?,
            FieldErrors::default(),
            filter.limit,
        ),
        Err(errors) => (Vec::new(), errors, PAGE),
    };
    let exact = if let Some(code) = code_to_look_up(&q).filter(|_| cursor.is_empty()) {
        admin
            .app
            .store
            .find_coupon(&code)
            .await?
            .map(|found| CouponRow::new(&found.coupon, now))
    } else {
        None
    };
    let next = next_cursor(coupons.last().map(|c| c.id), coupons.len(), limit);
    let heading = if q.is_empty() {
        "Latest coupons".to_owned()
    } else {
        format!("Coupons of user “{q}”")
    };
    let page = CouponsPage {
        layout: Layout::new(&session, "Coupons", "coupons").with_notice(notice_from_query(&pairs)),
        statuses: Choice::list(STATUSES, &status),
        next_url: next_url("/admin/coupons", &[("q", &q), ("status", &status)], next),
        exact,
        coupons: coupons.iter().map(|c| CouponRow::new(c, now)).collect(),
        heading,
        errors: error_lines(&errors),
        q,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The coupon a path names, or a 404 page.
async fn load(admin: &Admin, raw: &str) -> Result<CouponRecord, AdminError> {
    let Some(code) = code_to_look_up(raw) else {
        return Err(AdminError::not_found("coupon"));
    };
    admin
        .app
        .store
        .find_coupon(&code)
        .await?
        .ok_or_else(|| AdminError::not_found("coupon"))
}

fn facts(found: &CouponRecord, now: time::OffsetDateTime) -> Vec<Fact> {
    let c = &found.coupon;
    let money = |v: Option<i64>| v.map_or_else(|| "—".to_owned(), fmt_count);
    vec![
        Fact {
            label: "Status",
            value: c.status_at(now).as_str().to_owned(),
        },
        Fact {
            label: "Issued to",
            value: c
                .issued_to
                .clone()
                .unwrap_or_else(|| "nobody (a pre-generated code)".to_owned()),
        },
        Fact {
            label: "Issued",
            value: fmt_opt_time(c.issued_at.or(Some(c.created_at))),
        },
        Fact {
            label: "Redeemed by",
            value: or_dash(c.redeemed_by.as_deref()),
        },
        Fact {
            label: "Redeemed",
            value: fmt_opt_time(c.redeemed_at),
        },
        Fact {
            label: "Order",
            value: or_dash(c.order_id.as_deref()),
        },
        Fact {
            label: "Order amount",
            value: money(c.order_amount),
        },
        Fact {
            label: "Discount given",
            value: money(c.discount_amount),
        },
        Fact {
            label: "Batch expires",
            value: fmt_opt_time(Some(found.batch.expires_at)),
        },
        Fact {
            label: "Created by",
            value: key_label(found.created_by),
        },
    ]
}

pub async fn detail(
    State(admin): State<Admin>,
    session: Session,
    Path(code): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let found = load(&admin, &code).await?;
    let now = crate::domain::now();
    let stored = admin.app.store.coupon_events(found.coupon.id).await?;
    let events = history(&found.coupon, found.created_by, stored, now);
    let page = CouponPage {
        layout: Layout::new(&session, format!("Coupon {}", found.coupon.code), "coupons")
            .with_notice(notice_from_query(&pairs)),
        coupon: CouponRow::new(&found.coupon, now),
        batch_name: found.batch.name.clone(),
        facts: facts(&found, now),
        events: events.iter().map(EventRow::from).collect(),
        can_cancel: check_cancellable(&found.coupon).is_ok(),
        can_unredeem: found.coupon.status == CouponStatus::Redeemed,
    };
    Ok(render(StatusCode::OK, &page))
}

/// Cancel or unredeem.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Cancel,
    Unredeem,
}

fn confirm_page(
    session: &Session,
    found: &CouponRecord,
    action: Action,
    idem: String,
    reason: &str,
    reason_error: Option<String>,
    order_id: &str,
) -> ConfirmPage {
    let c = &found.coupon;
    let now = crate::domain::now();
    let summary = vec![
        Fact {
            label: "Coupon",
            value: c.code.clone(),
        },
        Fact {
            label: "Status",
            value: c.status_at(now).as_str().to_owned(),
        },
        Fact {
            label: "Batch",
            value: format!("{} (#{})", found.batch.name, c.batch_id),
        },
        Fact {
            label: "Issued to",
            value: or_dash(c.issued_to.as_deref()),
        },
    ];
    let (heading, warning, button, verb, mut facts) = match action {
        Action::Cancel => (
            format!("Cancel coupon {}?", c.code),
            "A cancelled coupon can never be redeemed again; this cannot be undone.",
            "Cancel the coupon",
            "cancel",
            summary,
        ),
        Action::Unredeem => (
            format!("Give back the redemption of {}?", c.code),
            "The coupon becomes usable again and the batch's counters go back by one.",
            "Unredeem the coupon",
            "unredeem",
            summary,
        ),
    };
    let mut hidden = vec![Hidden {
        name: "idem",
        value: idem,
    }];
    if action == Action::Unredeem {
        facts.push(Fact {
            label: "Redeemed for order",
            value: order_id.to_owned(),
        });
        facts.push(Fact {
            label: "Redeemed by",
            value: or_dash(c.redeemed_by.as_deref()),
        });
        hidden.push(Hidden {
            name: "order_id",
            value: order_id.to_owned(),
        });
    }
    ConfirmPage {
        layout: Layout::new(session, heading.clone(), "coupons"),
        heading,
        facts,
        warning: Some(warning.to_owned()),
        action: format!("/admin/coupons/{}/{verb}", c.code),
        hidden,
        reason: Some(ReasonField {
            value: reason.to_owned(),
            error: reason_error,
        }),
        button,
        back: format!("/admin/coupons/{}", c.code),
    }
}

async fn confirm(
    admin: Admin,
    session: Session,
    code: String,
    action: Action,
) -> Result<Response, AdminError> {
    let found = load(&admin, &code).await?;
    let refusal = match action {
        Action::Cancel => check_cancellable(&found.coupon).err(),
        Action::Unredeem => coupon::check_unredeemable(
            &found.coupon,
            found.coupon.order_id.as_deref().unwrap_or(""),
        )
        .err(),
    };
    if let Some(rejection) = refusal {
        // Nothing to confirm: say why on the coupon's page.
        return Ok(Redirect::to(&format!(
            "/admin/coupons/{}?refused={}",
            found.coupon.code,
            rejection.code()
        ))
        .into_response());
    }
    let order_id = found.coupon.order_id.clone().unwrap_or_default();
    let page = confirm_page(
        &session,
        &found,
        action,
        new_idem_key(),
        "",
        None,
        &order_id,
    );
    Ok(render(StatusCode::OK, &page))
}

pub async fn confirm_cancel(
    State(admin): State<Admin>,
    session: Session,
    Path(code): Path<String>,
) -> Result<Response, AdminError> {
    confirm(admin, session, code, Action::Cancel).await
}

pub async fn confirm_unredeem(
    State(admin): State<Admin>,
    session: Session,
    Path(code): Path<String>,
) -> Result<Response, AdminError> {
    confirm(admin, session, code, Action::Unredeem).await
}

async fn act(
    admin: Admin,
    session: Session,
    code: String,
    form: Form,
    action: Action,
) -> Result<Response, AdminError> {
    session.check_csrf(&form)?;
    let idem = form_idem_key(&form)?;
    let found = load(&admin, &code).await?;
    let code = found.coupon.code.clone();
    let reason = form.get("reason").unwrap_or("").trim().to_owned();
    let order_id = form.get("order_id").unwrap_or("").to_owned();
    let again = |error: String| {
        let page = confirm_page(
            &session,
            &found,
            action,
            idem.clone(),
            &reason,
            Some(error),
            &order_id,
        );
        Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
    };
    if reason.is_empty() {
        // The console asks for a reason; the API would take none.
        return again("required".to_owned());
    }
    let (api_path, body, command, done) = match action {
        Action::Cancel => {
            let body = json!({"code": code, "reason": reason});
            match coupon::parse_cancel(&body) {
                Ok(request) => (
                    "/v1/coupons/cancel/",
                    body,
                    Command::Cancel(request),
                    "cancelled",
                ),
                Err(errors) => return again(first_error(&errors)),
            }
        }
        Action::Unredeem => {
            let body = json!({"code": code, "order_id": order_id, "reason": reason});
            match coupon::parse_unredeem(&body) {
                Ok(request) => (
                    "/v1/coupons/unredeem/",
                    body,
                    Command::Unredeem(request),
                    "unredeemed",
                ),
                Err(errors) => return again(first_error(&errors)),
            }
        }
    };
    let outcome = actions::run(&admin, &session, idem, api_path, &body, command).await?;
    actions::after(&format!("/admin/coupons/{code}"), outcome, done)
}

/// The reasons of a refused request, as the API words them.
fn first_error(errors: &FieldErrors) -> String {
    match errors.0.get("reason") {
        Some(reason) if errors.0.len() == 1 => reason.clone(),
        _ => error_lines(errors).join("; "),
    }
}

pub async fn cancel(
    State(admin): State<Admin>,
    session: Session,
    Path(code): Path<String>,
    form: Form,
) -> Result<Response, AdminError> {
    act(admin, session, code, form, Action::Cancel).await
}

pub async fn unredeem(
    State(admin): State<Admin>,
    session: Session,
    Path(code): Path<String>,
    form: Form,
) -> Result<Response, AdminError> {
    act(admin, session, code, form, Action::Unredeem).await
}

// The reason's textarea (templates/admin/confirm.html) says maxlength="500".
const _: () = assert!(MAX_REASON_CHARS == 500);
