//! The console's writes: the API's own path. A form carries an idempotency key made
//! when its page was rendered; the handler builds the same `Command` and JSON body as
//! the API route would, and `http::write_once` runs it under the operator's API key.
//! A form sent twice (a double click, a reload) is the same request with the same key:
//! it is replayed, never run again. Afterwards the browser is sent to the page of what
//! changed, which says what happened.

use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::session::{Form, Session};
use super::templates::Notice;
use super::{Admin, AdminError};
use crate::domain::code::random_string;
use crate::domain::Rejection;
use crate::idempotency::{fingerprint, parse_key};
use crate::storage::Command;

/// Every rejection a console write can meet, to say what a `refused=CODE` means.
const REJECTIONS: &[Rejection] = &[
    Rejection::BatchNotFound,
    Rejection::BatchInactive,
    Rejection::BatchNotStarted,
    Rejection::BatchExpired,
    Rejection::PerUserLimitReached,
    Rejection::BatchLimitReached,
    Rejection::CouponNotFound,
    Rejection::CouponExpired,
    Rejection::CouponCancelled,
    Rejection::CouponAlreadyRedeemed,
    Rejection::CouponOwnershipMismatch,
    Rejection::MinOrderAmountNotMet,
    Rejection::CouponNotRedeemed,
    Rejection::OrderMismatch,
];

const KEY_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh idempotency key for a form: `admin-` and 26 random characters.
pub fn new_idem_key() -> String {
    format!("admin-{}", random_string(KEY_ALPHABET, 26))
}

/// The form's idempotency key, checked as the API checks the header.
pub fn form_idem_key(form: &Form) -> Result<String, AdminError> {
    parse_key(form.get("idem").map(str::as_bytes)).map_err(|_| {
        AdminError::bad_request(
            "This form has no valid idempotency key (it was not made by this console). \
             Reload the page and try again.",
        )
    })
}

/// What a console write came to.
pub enum Outcome {
    /// It succeeded (now, or earlier with the same form: `replayed`); the API's body.
    Done { body: Value, replayed: bool },
    /// A business rule said no (`code`, e.g. COUPON_CANCELLED).
    Refused { code: String, replayed: bool },
    /// The form's key was used before for a different request.
    Mismatch,
    /// The same form is still being processed.
    InProgress,
}

/// Runs `command` as the API route at `api_path` with `body` would: the same
/// fingerprint, the same idempotency scope (the operator's API key), the same stored
/// answer.
pub async fn run(
    admin: &Admin,
    session: &Session,
    idem: String,
    api_path: &str,
    body: &Value,
    command: Command,
) -> Result<Outcome, AdminError> {
    let fingerprint = fingerprint("POST", api_path, body);
    let response = match crate::http::write_once(
        &admin.app,
        &session.caller,
        idem,
        fingerprint,
        command,
    )
    .await
    {
        Ok(response) => response,
        Err(e) if e.code == "IDEMPOTENCY_KEY_BODY_MISMATCH" => return Ok(Outcome::Mismatch),
        Err(e) if e.code == "REQUEST_IN_PROGRESS" => return Ok(Outcome::InProgress),
        Err(e) => return Err(e.into()),
    };
    let status = response.status();
    let replayed = crate::http::render::is_replay(&response);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|_| AdminError::internal())?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(Outcome::Done { body, replayed })
    } else {
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("INTERNAL")
            .to_owned();
        Ok(Outcome::Refused { code, replayed })
    }
}

/// The page to see after a write, saying what happened.
pub fn after(page: &str, outcome: Outcome, done: &str) -> Result<Response, AdminError> {
    let query = match outcome {
        Outcome::Done { replayed, .. } => {
            format!("done={done}{}", if replayed { "&replayed=1" } else { "" })
        }
        Outcome::Refused { code, replayed } => format!(
            "refused={}{}",
            known_code(&code).unwrap_or("INTERNAL"),
            if replayed { "&replayed=1" } else { "" }
        ),
        Outcome::Mismatch => return Err(mismatch()),
        Outcome::InProgress => return Err(in_progress()),
    };
    Ok(Redirect::to(&format!("{page}?{query}")).into_response())
}

pub fn mismatch() -> AdminError {
    AdminError::new(
        axum::http::StatusCode::CONFLICT,
        "This form was already used",
        "This form was sent before with other values, and that request was done. \
         Nothing was done now: open the page again for a fresh form.",
    )
}

pub fn in_progress() -> AdminError {
    AdminError {
        retry_after: Some(1),
        ..AdminError::new(
            axum::http::StatusCode::CONFLICT,
            "Still working on it",
            "This form is still being processed. Reload the page in a moment.",
        )
    }
}

fn known_code(code: &str) -> Option<&'static str> {
    REJECTIONS
        .iter()
        .map(|r| r.code())
        .find(|known| *known == code)
}

/// The notice for `done=…` or `refused=…` in a page's query.
pub fn notice_from_query(pairs: &[(String, String)]) -> Option<Notice> {
    let get = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let replayed = if get("replayed").is_some() {
        " This form had been sent before: nothing was done twice; this is the stored answer."
    } else {
        ""
    };
    if let Some(done) = get("done") {
        let text = match done {
            "created" => "Batch created.",
            "activated" => "Batch activated: it issues and redeems again.",
            "deactivated" => "Batch deactivated: issue and redeem answer BATCH_INACTIVE.",
            "cancelled" => "Coupon cancelled.",
            "unredeemed" => "Redemption given back: the coupon can be used again.",
            "revoked" => "API key revoked; its sessions have ended.",
            _ => return None,
        };
        return Some(Notice::ok(format!("{text}{replayed}")));
    }
    let code = get("refused")?;
    let rejection = REJECTIONS.iter().find(|r| r.code() == code)?;
    Some(Notice::error(format!(
        "Refused: {} ({code}).{replayed}",
        capitalise(&rejection.to_string())
    )))
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn notices() {
        let n = notice_from_query(&pairs(&[("done", "cancelled")])).expect("notice");
        assert_eq!((n.kind, n.text.as_str()), ("ok", "Coupon cancelled."));
        let n =
            notice_from_query(&pairs(&[("done", "cancelled"), ("replayed", "1")])).expect("notice");
        assert!(n.text.contains("nothing was done twice"));
        let n = notice_from_query(&pairs(&[("refused", "COUPON_CANCELLED")])).expect("notice");
        assert_eq!(n.kind, "error");
        assert!(
            n.text.contains("The coupon has been cancelled"),
            "{}",
            n.text
        );
        assert!(notice_from_query(&pairs(&[("refused", "<script>")])).is_none());
        assert!(notice_from_query(&pairs(&[("done", "<b>")])).is_none());
        assert!(notice_from_query(&[]).is_none());
    }

    #[test]
    fn idem_keys_are_valid_header_values() {
        let key = new_idem_key();
        assert_eq!(parse_key(Some(key.as_bytes())), Ok(key.clone()));
        assert_ne!(key, new_idem_key());
    }
}
