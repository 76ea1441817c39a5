//! Prometheus metrics. The recorder is process-wide (the `metrics` facade); the
//! `/metrics` page is served on a listener of its own (`--metrics-bind`), never on the
//! API's port, and only to callers with an API key.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "coupond_http_requests_total";
pub const HTTP_DURATION: &str = "coupond_http_request_duration_seconds";
pub const COUPONS_ISSUED: &str = "coupond_coupons_issued_total";
pub const COUPONS_REDEEMED: &str = "coupond_coupons_redeemed_total";
pub const COUPONS_CANCELLED: &str = "coupond_coupons_cancelled_total";
pub const COUPONS_UNREDEEMED: &str = "coupond_coupons_unredeemed_total";
pub const BATCHES_CREATED: &str = "coupond_batches_created_total";
pub const BATCH_CHANGES: &str = "coupond_batch_activations_total";
pub const CODE_JOBS_STARTED: &str = "coupond_code_jobs_started_total";
pub const REJECTIONS: &str = "coupond_rejections_total";
pub const REPLAYS: &str = "coupond_idempotency_replays_total";
pub const MISMATCHES: &str = "coupond_idempotency_mismatches_total";
pub const IN_FLIGHT_WAITS: &str = "coupond_idempotency_inflight_waits_total";
pub const IN_PROGRESS: &str = "coupond_idempotency_in_progress_total";
pub const DB_CONNECTIONS: &str = "coupond_db_connections";
pub const DB_WAIT: &str = "coupond_db_wait_seconds";
pub const WRITER_QUEUE: &str = "coupond_sqlite_writer_queue";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` if another recorder was
/// installed first (an embedding program's own), in which case ours stays silent.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    describe_counter!(
        COUPONS_ISSUED,
        "Coupons issued (first executions, not replays)"
    );
    describe_counter!(
        COUPONS_REDEEMED,
        "Coupons redeemed (first executions, not replays)"
    );
    describe_counter!(COUPONS_CANCELLED, "Coupons cancelled");
    describe_counter!(COUPONS_UNREDEEMED, "Redemptions given back");
    describe_counter!(BATCHES_CREATED, "Coupon batches created");
    describe_counter!(BATCH_CHANGES, "Batches activated or deactivated");
    describe_counter!(CODE_JOBS_STARTED, "Bulk-code jobs started");
    describe_counter!(
        REJECTIONS,
        "Business refusals, by error code (first executions, not replays)"
    );
    describe_counter!(
        REPLAYS,
        "Answers replayed from a stored idempotency record, by source: memory (this process's answer cache) or database"
    );
    describe_counter!(
        MISMATCHES,
        "Idempotency keys reused with a different request (409)"
    );
    describe_counter!(
        IN_FLIGHT_WAITS,
        "Duplicates that waited for their original in flight"
    );
    describe_counter!(
        IN_PROGRESS,
        "Duplicates answered 409 REQUEST_IN_PROGRESS after waiting too long"
    );
    describe_gauge!(
        DB_CONNECTIONS,
        "Database connections, by state (idle, in_use)"
    );
    describe_histogram!(DB_WAIT, Unit::Seconds, "Time a request waited for the database: a pool connection (PostgreSQL) or the writer (SQLite)");
    describe_gauge!(WRITER_QUEUE, "Writes waiting for the SQLite writer");
}

/// Records how long something waited for the database.
pub fn record_db_wait(kind: &'static str, waited: Duration) {
    metrics::histogram!(DB_WAIT, "kind" => kind).record(waited.as_secs_f64());
}
