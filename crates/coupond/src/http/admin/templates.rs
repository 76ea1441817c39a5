//! The pages (askama templates under `templates/admin/`) and what each one prints.
//! Every value is escaped by the template; nothing here is raw HTML.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::session::Session;
use super::views::{ActivityRow, BatchRow, Chart, CouponRow, EventRow, Totals};
use super::AdminError;

/// Renders a page with a status; a page that cannot be rendered is a 500 page.
pub fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering an admin page failed");
            AdminError::internal().into_response()
        }
    }
}

/// A message at the top of a page.
pub struct Notice {
    /// `ok`, `info` or `error`.
    pub kind: &'static str,
    pub text: String,
}

impl Notice {
    pub fn ok(text: impl Into<String>) -> Notice {
        Notice {
            kind: "ok",
            text: text.into(),
        }
    }

    pub fn info(text: impl Into<String>) -> Notice {
        Notice {
            kind: "info",
            text: text.into(),
        }
    }

    pub fn error(text: impl Into<String>) -> Notice {
        Notice {
            kind: "error",
            text: text.into(),
        }
    }
}

/// What every signed-in page has: the navigation, who is signed in, the CSRF token of
/// the sign-out form.
pub struct Layout {
    pub title: String,
    pub nav: &'static str,
    pub csrf: String,
    pub who: String,
    pub until: String,
    pub v: &'static str,
    pub notice: Option<Notice>,
}

impl Layout {
    pub fn new(session: &Session, title: impl Into<String>, nav: &'static str) -> Layout {
        Layout {
            title: title.into(),
            nav,
            csrf: session.csrf.clone(),
            who: format!("{} (key #{})", session.caller.name, session.caller.key_id),
            until: super::views::fmt_time(session.expires_at),
            v: super::assets::version(),
            notice: None,
        }
    }

    pub fn with_notice(mut self, notice: Option<Notice>) -> Layout {
        self.notice = notice;
        self
    }
}

#[derive(Template)]
#[template(path = "admin/login.html")]
pub struct LoginPage<'a> {
    pub v: &'static str,
    pub login_token: &'a str,
    pub next: &'a str,
    pub error: Option<&'a str>,
    pub info: Option<&'static str>,
    /// How long a session lasts, e.g. `8h`.
    pub session_ttl: String,
}

#[derive(Template)]
#[template(path = "admin/error.html")]
pub struct ErrorPage<'a> {
    pub v: &'static str,
    pub status: u16,
    pub title: &'a str,
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
pub struct DashboardPage {
    pub layout: Layout,
    pub batches: Vec<BatchRow>,
    pub totals: Totals,
    pub activity: Vec<ActivityRow>,
    pub updated: String,
}

/// The live part of the dashboard, fetched again every few seconds.
#[derive(Template)]
#[template(path = "admin/batch_stats.html")]
pub struct BatchStatsFragment {
    pub batches: Vec<BatchRow>,
    pub totals: Totals,
    pub updated: String,
}

/// An option of a `<select>`.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl Choice {
    pub fn list(options: &[(&str, &str)], selected: &str) -> Vec<Choice> {
        options
            .iter()
            .map(|(value, label)| Choice {
                value: (*value).to_owned(),
                label: (*label).to_owned(),
                selected: *value == selected,
            })
            .collect()
    }
}

#[derive(Template)]
#[template(path = "admin/batches.html")]
pub struct BatchesPage {
    pub layout: Layout,
    pub q: String,
    pub states: Vec<Choice>,
    pub batches: Vec<BatchRow>,
    pub next_url: Option<String>,
    pub errors: Vec<String>,
}

/// A label and a value, for lists of settings.
pub struct Fact {
    pub label: &'static str,
    pub value: String,
}

/// A form of one button (activate, deactivate), with its idempotency key.
pub struct ButtonForm {
    pub action: String,
    pub idem: String,
    pub label: &'static str,
    pub class: &'static str,
}

#[derive(Template)]
#[template(path = "admin/batch.html")]
pub struct BatchPage {
    pub layout: Layout,
    pub batch: BatchRow,
    pub facts: Vec<Fact>,
    pub chart: Chart,
    pub coupons: Vec<CouponRow>,
    pub next_url: Option<String>,
    pub toggle: ButtonForm,
}

/// A field of a form, with what was typed and what is wrong with it.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    /// `text`, `number`, `datetime-local` or `select`.
    pub kind: &'static str,
    pub value: String,
    pub choices: Vec<Choice>,
    pub help: &'static str,
    pub required: bool,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/batch_new.html")]
pub struct NewBatchPage {
    pub layout: Layout,
    pub idem: String,
    pub fields: Vec<Field>,
    /// Reasons not tied to a field of the form.
    pub errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "admin/coupons.html")]
pub struct CouponsPage {
    pub layout: Layout,
    pub q: String,
    pub statuses: Vec<Choice>,
    pub exact: Option<CouponRow>,
    pub coupons: Vec<CouponRow>,
    pub heading: String,
    pub next_url: Option<String>,
    pub errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "admin/coupon.html")]
pub struct CouponPage {
    pub layout: Layout,
    pub coupon: CouponRow,
    pub batch_name: String,
    pub facts: Vec<Fact>,
    pub events: Vec<EventRow>,
    pub can_cancel: bool,
    pub can_unredeem: bool,
}

/// A hidden field of a form.
pub struct Hidden {
    pub name: &'static str,
    pub value: String,
}

/// "Are you sure?" for cancel, unredeem and revoke.
#[derive(Template)]
#[template(path = "admin/confirm.html")]
pub struct ConfirmPage {
    pub layout: Layout,
    pub heading: String,
    pub facts: Vec<Fact>,
    pub warning: Option<String>,
    pub action: String,
    pub hidden: Vec<Hidden>,
    /// The reason to give, for cancel and unredeem.
    pub reason: Option<ReasonField>,
    pub button: &'static str,
    pub back: String,
}

pub struct ReasonField {
    pub value: String,
    pub error: Option<String>,
}

pub struct KeyRow {
    pub id: i64,
    pub name: String,
    pub scope: &'static str,
    pub prefix: String,
    pub created: String,
    pub last_used: String,
    pub revoked: Option<String>,
    pub is_self: bool,
}

/// A key just created: the only time its secret is shown.
pub struct CreatedKey {
    pub id: i64,
    pub name: String,
    pub scope: &'static str,
    pub secret: String,
}

#[derive(Template)]
#[template(path = "admin/keys.html")]
pub struct KeysPage {
    pub layout: Layout,
    pub keys: Vec<KeyRow>,
    pub created: Option<CreatedKey>,
    pub idem: String,
    pub name: String,
    pub name_error: Option<String>,
    pub scopes: Vec<Choice>,
    pub scope_error: Option<String>,
}

pub struct RecordView {
    pub owner: String,
    pub scope: String,
    pub status: u16,
    pub fingerprint: String,
    pub body: String,
    pub created: String,
    pub expires: String,
    pub live: bool,
}

#[derive(Template)]
#[template(path = "admin/idempotency.html")]
pub struct IdempotencyPage {
    pub layout: Layout,
    pub key: String,
    pub owners: Vec<Choice>,
    pub searched: bool,
    pub records: Vec<RecordView>,
    pub error: Option<String>,
}
