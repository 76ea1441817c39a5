//! The dashboard: the newest batches with their live counters, and recent activity.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::actions::notice_from_query;
use super::session::Session;
use super::templates::{render, BatchStatsFragment, DashboardPage, Layout};
use super::views::{fmt_time, ActivityRow, BatchRow, Totals};
use super::{Admin, AdminError};
use crate::domain::coupon::Page;
use crate::storage::AdminBatchFilter;

/// Batches on the dashboard.
const DASHBOARD_BATCHES: i64 = 10;
const ACTIVITY: i64 = 12;

async fn batch_stats(admin: &Admin) -> Result<BatchStatsFragment, AdminError> {
    let now = crate::domain::now();
    let batches = admin
        .app
        .store
        .admin_list_batches(&AdminBatchFilter {
            page: Page {
                limit: DASHBOARD_BATCHES,
                after_id: None,
            },
            state: None,
            name: None,
            now,
        })
        .await?;
    Ok(BatchStatsFragment {
        totals: Totals::of(&batches),
        batches: batches
            .iter()
            .map(|(b, s)| BatchRow::new(b, *s, now))
            .collect(),
        updated: fmt_time(now),
    })
}

pub async fn page(
    State(admin): State<Admin>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let stats = batch_stats(&admin).await?;
    let activity = admin.app.store.recent_activity(ACTIVITY).await?;
    let page = DashboardPage {
        layout: Layout::new(&session, "Dashboard", "dashboard")
            .with_notice(notice_from_query(&pairs)),
        batches: stats.batches,
        totals: stats.totals,
        activity: activity.iter().map(ActivityRow::from).collect(),
        updated: stats.updated,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The batch table alone, which the dashboard's script fetches every few seconds.
pub async fn stats_fragment(
    State(admin): State<Admin>,
    _session: Session,
) -> Result<Response, AdminError> {
    Ok(render(StatusCode::OK, &batch_stats(&admin).await?))
}
