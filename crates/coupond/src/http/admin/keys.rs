//! API keys: the list, creating one (its secret shown once), revoking one (which ends
//! the console sessions opened with it).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::actions::{form_idem_key, in_progress, new_idem_key, notice_from_query};
use super::batches::path_id;
use super::session::{signed_out_to_login, Form, Session};
use super::templates::{
    render, Choice, ConfirmPage, CreatedKey, Fact, KeyRow, KeysPage, Layout, Notice,
};
use super::views::{fmt_opt_time, fmt_time};
use super::{Admin, AdminError};
use crate::domain::apikey::MAX_NAME_CHARS;
use crate::domain::{ApiKey, NewApiKey, Scope};
use crate::idempotency::fingerprint;
use crate::storage::{IdempotencyClaim, KeyCreation};

const SCOPES: &[(&str, &str)] = &[
    ("service", "service: issue, redeem, list"),
    ("read", "read: GET requests only"),
    ("admin", "admin: everything, batches and this console too"),
];

/// What the fingerprint of a key creation covers; the path names no API route (there
/// is none), only this form.
const FORM_PATH: &str = "/admin/keys";

fn rows(keys: &[ApiKey], session: &Session) -> Vec<KeyRow> {
    keys.iter()
        .map(|k| KeyRow {
            id: k.id,
            name: k.name.clone(),
            scope: k.scope.as_str(),
            prefix: k.prefix.clone(),
            created: fmt_time(k.created_at),
            last_used: fmt_opt_time(k.last_used_at),
            revoked: k.revoked_at.map(fmt_time),
            is_self: k.id == session.caller.key_id,
        })
        .collect()
}

struct FormState {
    name: String,
    scope: String,
    name_error: Option<String>,
    scope_error: Option<String>,
}

async fn page(
    admin: &Admin,
    session: &Session,
    idem: String,
    form: FormState,
    created: Option<CreatedKey>,
    notice: Option<Notice>,
) -> Result<KeysPage, AdminError> {
    let keys = admin.app.store.list_api_keys().await?;
    Ok(KeysPage {
        layout: Layout::new(session, "API keys", "keys").with_notice(notice),
        keys: rows(&keys, session),
        created,
        idem,
        scopes: Choice::list(SCOPES, &form.scope),
        name: form.name,
        name_error: form.name_error,
        scope_error: form.scope_error,
    })
}

fn empty_form() -> FormState {
    FormState {
        name: String::new(),
        scope: "service".to_owned(),
        name_error: None,
        scope_error: None,
    }
}

pub async fn list(
    State(admin): State<Admin>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let page = page(
        &admin,
        &session,
        new_idem_key(),
        empty_form(),
        None,
        notice_from_query(&pairs),
    )
    .await?;
    Ok(render(StatusCode::OK, &page))
}

pub async fn create(
    State(admin): State<Admin>,
    session: Session,
    form: Form,
) -> Result<Response, AdminError> {
    session.check_csrf(&form)?;
    let idem = form_idem_key(&form)?;
    let name = form.get("name").unwrap_or("").trim().to_owned();
    let scope_raw = form.get("scope").unwrap_or("").to_owned();
    let mut state = FormState {
        name: name.clone(),
        scope: scope_raw.clone(),
        name_error: None,
        scope_error: None,
    };
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        state.name_error = Some(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    } else if name.chars().any(char::is_control) {
        state.name_error = Some("must not contain control characters".to_owned());
    }
    let scope = Scope::parse(&scope_raw);
    if scope.is_none() {
        state.scope_error = Some("must be one of admin, service, read".to_owned());
    }
    let Some(scope) = scope.filter(|_| state.name_error.is_none()) else {
        let page = page(&admin, &session, idem, state, None, None).await?;
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page));
    };

    let now = crate::domain::now();
    let claim = IdempotencyClaim {
        scope: session.caller.idempotency_scope(),
        key: idem,
        fingerprint: fingerprint(
            "POST",
            FORM_PATH,
            &json!({"name": name, "scope": scope.as_str()}),
        ),
        expires_at: now + admin.app.policy.ttl,
    };
    let new = NewApiKey::generate(&name, scope);
    let secret = new.secret.clone();
    match admin.app.store.create_api_key_once(claim, new, now).await? {
        KeyCreation::Created(key) => {
            tracing::info!(
                api_key_id = key.id,
                scope = key.scope.as_str(),
                by = session.caller.key_id,
                "admin console: API key created"
            );
            if let Err(e) = admin.app.keys.refresh().await {
                tracing::warn!(error = %e, "reloading API keys failed");
            }
            let created = CreatedKey {
                id: key.id,
                name: key.name,
                scope: key.scope.as_str(),
                secret,
            };
            let page = page(
                &admin,
                &session,
                new_idem_key(),
                empty_form(),
                Some(created),
                None,
            )
            .await?;
            Ok(render(StatusCode::OK, &page))
        }
        KeyCreation::Replayed(record) => {
            let body: serde_json::Value =
                serde_json::from_slice(&record.response.body).unwrap_or_default();
            let notice = Notice::info(format!(
                "This form had been sent before, and key #{} “{}” was created then; nothing \
                 was done twice. Its secret was shown only that once: if it was lost, revoke \
                 the key and create another.",
                body["id"].as_i64().unwrap_or(0),
                body["name"].as_str().unwrap_or("")
            ));
            let page = page(
                &admin,
                &session,
                new_idem_key(),
                empty_form(),
                None,
                Some(notice),
            )
            .await?;
            Ok(render(StatusCode::OK, &page))
        }
        KeyCreation::Mismatch => {
            let notice = Notice::error(
                "This form had already created another key, so nothing was done now. The \
                 form is renewed: send it again to create this one.",
            );
            let page = page(&admin, &session, new_idem_key(), state, None, Some(notice)).await?;
            Ok(render(StatusCode::CONFLICT, &page))
        }
        KeyCreation::InProgress => Err(in_progress()),
    }
}

async fn find_key(admin: &Admin, id: i64) -> Result<(ApiKey, Vec<ApiKey>), AdminError> {
    let keys = admin.app.store.list_api_keys().await?;
    let key = keys
        .iter()
        .find(|k| k.id == id)
        .cloned()
        .ok_or_else(|| AdminError::not_found("API key"))?;
    Ok((key, keys))
}

pub async fn confirm_revoke(
    State(admin): State<Admin>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id = path_id(&id, "API key")?;
    let (key, keys) = find_key(&admin, id).await?;
    if key.revoked_at.is_some() {
        return Ok(Redirect::to("/admin/keys").into_response());
    }
    let other_admins = keys
        .iter()
        .filter(|k| k.id != id && k.scope == Scope::Admin && k.revoked_at.is_none())
        .count();
    let mut warnings = vec![
        "Requests with this key are refused from now on (within a second \
                             on every coupond process), and its console sessions end."
            .to_owned(),
    ];
    if key.id == session.caller.key_id {
        warnings.push("It is the key of your own session: you will be signed out.".to_owned());
    }
    if key.scope == Scope::Admin && other_admins == 0 {
        warnings.push(
            "It is the only active admin key: afterwards only `coupond keys create` on the \
             server can make a new one."
                .to_owned(),
        );
    }
    let heading = format!("Revoke API key #{} “{}”?", key.id, key.name);
    let page = ConfirmPage {
        layout: Layout::new(&session, heading.clone(), "keys"),
        heading,
        facts: vec![
            Fact {
                label: "Key",
                value: format!("#{} {}…", key.id, key.prefix),
            },
            Fact {
                label: "Name",
                value: key.name.clone(),
            },
            Fact {
                label: "Scope",
                value: key.scope.as_str().to_owned(),
            },
            Fact {
                label: "Created",
                value: fmt_time(key.created_at),
            },
            Fact {
                label: "Last used",
                value: fmt_opt_time(key.last_used_at),
            },
        ],
        warning: Some(warnings.join(" ")),
        action: format!("/admin/keys/{}/revoke", key.id),
        hidden: Vec::new(),
        reason: None,
        button: "Revoke the key",
        back: "/admin/keys".to_owned(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// Revoking twice is revoking once (the first time stands), so this needs no
/// idempotency key.
pub async fn revoke(
    State(admin): State<Admin>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, AdminError> {
    session.check_csrf(&form)?;
    let id = path_id(&id, "API key")?;
    let now = crate::domain::now();
    let key = admin
        .app
        .store
        .revoke_api_key(id, now)
        .await?
        .ok_or_else(|| AdminError::not_found("API key"))?;
    let ended = admin.app.store.end_admin_sessions_of_key(id).await?;
    if let Err(e) = admin.app.keys.refresh().await {
        tracing::warn!(error = %e, "reloading API keys failed");
    }
    tracing::info!(
        api_key_id = key.id,
        by = session.caller.key_id,
        sessions_ended = ended,
        "admin console: API key revoked"
    );
    if id == session.caller.key_id {
        return Ok(signed_out_to_login(&headers, "revoked"));
    }
    Ok(Redirect::to("/admin/keys?done=revoked").into_response())
}
