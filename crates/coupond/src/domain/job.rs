//! Bulk codes: pre-generating a batch's coupons for printed vouchers, as a job that
//! runs in the background and reports its progress.

use serde_json::Value;
use time::OffsetDateTime;

use super::input::{FieldErrors, Fields};

/// The most codes one job generates.
pub const MAX_JOB_CODES: i64 = 1_000_000;
/// Codes generated per transaction: small enough that other writes never wait long.
pub const JOB_CHUNK: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    Done,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        match s {
            "running" => Some(JobStatus::Running),
            "done" => Some(JobStatus::Done),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeJob {
    pub id: i64,
    pub batch_id: i64,
    pub requested: i64,
    pub generated: i64,
    pub status: JobStatus,
    pub created_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

/// `POST /v1/coupon-batches/{id}/codes/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCodeJob {
    pub batch_id: i64,
    pub count: i64,
}

pub fn parse_code_job(batch_id: i64, body: &Value) -> Result<NewCodeJob, FieldErrors> {
    let mut f = Fields::new(body);
    let count = f.required_int("count", 1);
    if count.is_some_and(|c| c > MAX_JOB_CODES) {
        f.errors
            .add("count", format!("must be at most {MAX_JOB_CODES}"));
    }
    match count {
        Some(count) => f.errors.into_result(NewCodeJob { batch_id, count }),
        None => Err(f.errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts() {
        assert_eq!(
            parse_code_job(3, &json!({"count": 5})),
            Ok(NewCodeJob {
                batch_id: 3,
                count: 5
            })
        );
        for bad in [
            json!({}),
            json!({"count": 0}),
            json!({"count": 1_000_001}),
            json!({"count": "5"}),
        ] {
            assert!(
                parse_code_job(3, &bad).expect_err("invalid").has("count"),
                "{bad}"
            );
        }
    }
}
