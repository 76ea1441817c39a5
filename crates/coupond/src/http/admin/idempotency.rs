//! Idempotency records: what a write stored under its key, and until when it replays.
//! Records are per API key (scope `key:<id>`); the lookup tries one key's scope, or
//! every key's (a few primary-key reads: there are few API keys).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::session::Session;
use super::templates::{render, Choice, IdempotencyPage, Layout, RecordView};
use super::views::fmt_time;
use super::{Admin, AdminError};
use crate::domain::coupon::Query;
use crate::idempotency::parse_key;

/// A stored body as shown: pretty JSON if it is JSON, else as text.
fn show_body(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

pub async fn lookup(
    State(admin): State<Admin>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let query = Query::new(&pairs);
    let key = query.get("key").unwrap_or("").to_owned();
    let owner = query.get("owner").unwrap_or("").to_owned();
    let keys = admin.app.store.list_api_keys().await?;
    let mut options = vec![("".to_owned(), "any API key".to_owned())];
    options.extend(keys.iter().map(|k| {
        (
            k.id.to_string(),
            format!("#{} {} ({})", k.id, k.name, k.scope.as_str()),
        )
    }));
    let owners = options
        .into_iter()
        .map(|(value, label)| Choice {
            selected: value == owner,
            value,
            label,
        })
        .collect();
    let searched = !key.is_empty();
    let mut error = None;
    let mut records = Vec::new();
    if searched {
        match parse_key(Some(key.as_bytes())) {
            Err(e) => error = Some(e.to_string()),
            Ok(key) => {
                let now = crate::domain::now();
                for k in keys
                    .iter()
                    .filter(|k| owner.is_empty() || k.id.to_string() == owner)
                {
                    let scope = format!("key:{}", k.id);
                    if let Some(record) = admin
                        .app
                        .store
                        .find_idempotency_record(&scope, &key)
                        .await?
                    {
                        records.push(RecordView {
                            owner: format!("Key #{} “{}”", k.id, k.name),
                            scope,
                            status: record.response.status,
                            fingerprint: record.fingerprint,
                            body: show_body(&record.response.body),
                            created: fmt_time(record.created_at),
                            expires: fmt_time(record.expires_at),
                            live: record.expires_at > now,
                        });
                    }
                }
            }
        }
    }
    let page = IdempotencyPage {
        layout: Layout::new(&session, "Idempotency records", "idempotency"),
        key,
        owners,
        searched,
        records,
        error,
    };
    Ok(render(StatusCode::OK, &page))
}
