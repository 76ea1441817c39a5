use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks exactly (one hour, in microseconds); slower ones saturate.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Per-worker tallies; each worker owns one so the hot path takes no lock, and they are merged
/// once the run is over.
#[derive(Debug, Clone)]
pub struct Stats {
    pub latency_us: Histogram<u64>,
    pub requests: u64,
    pub successes: u64,
    pub transport_errors: u64,
    /// Keyed by `Answer::label`, e.g. `"200"` or `"409 BATCH_LIMIT_REACHED"`.
    pub answers: BTreeMap<String, u64>,
    /// Answers the scenario did not allow for, same keys as `answers`.
    pub unexpected: BTreeMap<String, u64>,
    /// A few transport error messages to show, so a refused connection is not just a number.
    pub error_samples: Vec<String>,
}

impl Stats {
    pub fn new() -> Result<Self> {
        Ok(Stats {
            latency_us: Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
                .context("creating latency histogram")?,
            requests: 0,
            successes: 0,
            transport_errors: 0,
            answers: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            error_samples: Vec::new(),
        })
    }

    pub fn record_answer(&mut self, status: u16, label: String, latency: Duration, expected: bool) {
        self.requests += 1;
        if (200..300).contains(&status) {
            self.successes += 1;
        }
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record(us);
        if !expected {
            *self.unexpected.entry(label.clone()).or_default() += 1;
        }
        *self.answers.entry(label).or_default() += 1;
    }

    pub fn record_transport_error(&mut self, message: String) {
        self.requests += 1;
        self.transport_errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(message);
        }
    }

    pub fn merge(&mut self, other: &Stats) -> Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")?;
        self.requests += other.requests;
        self.successes += other.successes;
        self.transport_errors += other.transport_errors;
        for (k, v) in &other.answers {
            *self.answers.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.unexpected {
            *self.unexpected.entry(k.clone()).or_default() += v;
        }
        for s in &other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(s.clone());
            }
        }
        Ok(())
    }

    pub fn server_errors(&self) -> u64 {
        self.answers
            .iter()
            .filter(|(label, _)| label.starts_with('5'))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64();
        let answered = self.latency_us.len();
        let q = |quantile: f64| -> f64 {
            if answered == 0 {
                0.0
            } else {
                self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
            }
        };
        Summary {
            requests: self.requests,
            successes: self.successes,
            transport_errors: self.transport_errors,
            server_errors: self.server_errors(),
            answers: self.answers.clone(),
            unexpected: self.unexpected.clone(),
            elapsed_s: secs,
            throughput_rps: if secs > 0.0 {
                self.requests as f64 / secs
            } else {
                0.0
            },
            latency_ms: Latency {
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                max: if answered == 0 {
                    0.0
                } else {
                    self.latency_us.max() as f64 / 1000.0
                },
                mean: if answered == 0 {
                    0.0
                } else {
                    self.latency_us.mean() / 1000.0
                },
            },
            error_samples: self.error_samples.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// What a run's stats boil down to for tables, JSON and the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub successes: u64,
    pub transport_errors: u64,
    pub server_errors: u64,
    pub answers: BTreeMap<String, u64>,
    pub unexpected: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub latency_ms: Latency,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        match Stats::new() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn merge_and_summarise() {
        let mut a = stats();
        let mut b = stats();
        for ms in 1..=100u64 {
            let target = if ms % 2 == 0 { &mut a } else { &mut b };
            target.record_answer(200, "200".into(), Duration::from_millis(ms), true);
        }
        b.record_answer(
            409,
            "409 BATCH_LIMIT_REACHED".into(),
            Duration::from_millis(5),
            true,
        );
        b.record_answer(500, "500".into(), Duration::from_millis(5), false);
        a.record_transport_error("connection refused".into());

        let mut total = stats();
        assert!(total.merge(&a).is_ok());
        assert!(total.merge(&b).is_ok());

        let s = total.summary(Duration::from_secs(2));
        assert_eq!(s.requests, 103);
        assert_eq!(s.successes, 100);
        assert_eq!(s.transport_errors, 1);
        assert_eq!(s.server_errors, 1);
        assert_eq!(s.answers.get("200"), Some(&100));
        assert_eq!(s.answers.get("409 BATCH_LIMIT_REACHED"), Some(&1));
        assert_eq!(s.unexpected.get("500"), Some(&1));
        assert_eq!(s.unexpected.len(), 1);
        assert!((s.throughput_rps - 51.5).abs() < 1e-9);
        // 3 significant figures: quantiles are within 0.1% of the exact value.
        assert!(
            (s.latency_ms.p50 - 49.0).abs() < 1.0,
            "{}",
            s.latency_ms.p50
        );
        assert!(
            (s.latency_ms.p99 - 99.0).abs() < 1.0,
            "{}",
            s.latency_ms.p99
        );
        assert!(
            (s.latency_ms.max - 100.0).abs() < 0.2,
            "{}",
            s.latency_ms.max
        );
        assert_eq!(s.error_samples, vec!["connection refused".to_string()]);
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = stats().summary(Duration::ZERO);
        assert_eq!(s.requests, 0);
        assert_eq!(s.throughput_rps, 0.0);
        assert_eq!(s.latency_ms.p99, 0.0);
        assert_eq!(s.latency_ms.max, 0.0);
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_kept() {
        let mut s = stats();
        s.record_answer(200, "200".into(), Duration::from_nanos(10), true);
        s.record_answer(200, "200".into(), Duration::from_secs(10_000), true);
        assert_eq!(s.latency_us.len(), 2);
    }
}
