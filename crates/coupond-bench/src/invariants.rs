use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::stats::Summary;

const MAX_SAMPLES: usize = 5;

/// What a batch promised when it was created.
#[derive(Debug, Clone, Serialize)]
pub struct BatchLimits {
    pub id: i64,
    pub total_limit: u64,
    pub per_user_limit: u64,
    /// Coupons put in by `coupond prefill`, which the client never sees codes for.
    pub external_prefill: u64,
}

/// A 200 from the issue endpoint for a fresh (non-replayed) request.
#[derive(Debug, Clone)]
pub struct Issued {
    pub batch_id: i64,
    pub user_id: String,
    pub code: String,
}

/// A count of violations plus the first few, so a million failures do not fill memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Violations {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Violations {
    pub fn push(&mut self, what: impl FnOnce() -> String) {
        self.count += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(what());
        }
    }

    pub fn merge(&mut self, other: Violations) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s);
            }
        }
    }
}

/// Everything the client saw that invariants are judged on, setup phases included.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub issued: Vec<Issued>,
    /// Codes of successful redemptions.
    pub redeemed: Vec<String>,
    pub replays_checked: u64,
    pub replay_mismatches: Violations,
    pub lists_checked: u64,
    pub list_violations: Violations,
}

impl Observations {
    pub fn merge(&mut self, other: Observations) {
        self.issued.extend(other.issued);
        self.redeemed.extend(other.redeemed);
        self.replays_checked += other.replays_checked;
        self.replay_mismatches.merge(other.replay_mismatches);
        self.lists_checked += other.lists_checked;
        self.list_violations.merge(other.list_violations);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, v: &Violations, ok_detail: String) -> Check {
        if v.count == 0 {
            Check {
                name,
                ok: true,
                detail: ok_detail,
            }
        } else {
            Check {
                name,
                ok: false,
                detail: format!("{} violation(s): {}", v.count, v.samples.join("; ")),
            }
        }
    }
}

/// No code of this run was handed out by an earlier run on the same batch (`--repeat`):
/// `check` sees one run's codes, and a server that reuses codes across time would pass it.
/// The prefill's codes are not kept (a million of them), so they are not compared.
pub fn codes_new_across_runs(earlier: &HashSet<String>, obs: &Observations) -> Check {
    let mut again = Violations::default();
    let mut fresh: HashSet<&str> = HashSet::new();
    for i in &obs.issued {
        if earlier.contains(&i.code) && fresh.insert(&i.code) {
            again.push(|| {
                format!(
                    "code {} handed out to batch {} user {} was handed out by an earlier run",
                    i.code, i.batch_id, i.user_id
                )
            });
        }
    }
    Check::new(
        "unique-codes-across-runs",
        &again,
        format!("none of the earlier runs' {} codes again", earlier.len()),
    )
}

pub fn all_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok)
}

pub fn check(batches: &[BatchLimits], obs: &Observations, summary: &Summary) -> Vec<Check> {
    let limits: HashMap<i64, &BatchLimits> = batches.iter().map(|b| (b.id, b)).collect();

    let mut codes_per_batch: HashMap<i64, HashSet<&str>> = HashMap::new();
    let mut codes_per_user: HashMap<(i64, &str), HashSet<&str>> = HashMap::new();
    let mut owner: HashMap<&str, (i64, &str)> = HashMap::new();
    let mut unique = Violations::default();
    let mut seen_codes: HashSet<&str> = HashSet::new();
    for i in &obs.issued {
        codes_per_batch
            .entry(i.batch_id)
            .or_default()
            .insert(&i.code);
        codes_per_user
            .entry((i.batch_id, &i.user_id))
            .or_default()
            .insert(&i.code);
        // Two fresh requests must never be handed the same coupon; if they were, counting
        // distinct codes would also under-count the batch.
        if !seen_codes.insert(&i.code) {
            let prev = owner.get(i.code.as_str()).copied();
            unique.push(|| match prev {
                Some((b, u)) => format!(
                    "code {} handed out again (first batch {b} user {u}, now batch {} user {})",
                    i.code, i.batch_id, i.user_id
                ),
                None => format!("code {} handed out twice", i.code),
            });
        }
        owner.entry(&i.code).or_insert((i.batch_id, &i.user_id));
    }

    let mut total = Violations::default();
    let mut ids: Vec<_> = codes_per_batch.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let seen = codes_per_batch.get(&id).map_or(0, |s| s.len() as u64);
        match limits.get(&id) {
            Some(b) => {
                let held = seen + b.external_prefill;
                if held > b.total_limit {
                    total.push(|| {
                        format!(
                            "batch {id}: {held} coupons ({seen} seen + {} prefilled) > total_limit {}",
                            b.external_prefill, b.total_limit
                        )
                    });
                }
            }
            None => total.push(|| format!("coupons issued from unknown batch {id}")),
        }
    }

    let mut per_user = Violations::default();
    let mut users: Vec<_> = codes_per_user.iter().collect();
    users.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for ((batch, user), codes) in users {
        let limit = limits.get(batch).map_or(u64::MAX, |b| b.per_user_limit);
        if codes.len() as u64 > limit {
            per_user.push(|| {
                format!(
                    "batch {batch} user {user}: {} coupons > per_user_limit {limit}",
                    codes.len()
                )
            });
        }
    }

    let mut redeemed_twice = Violations::default();
    let mut redeemed: HashMap<&str, u32> = HashMap::new();
    for code in &obs.redeemed {
        *redeemed.entry(code).or_default() += 1;
    }
    let mut twice: Vec<_> = redeemed.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort_unstable();
    for (code, n) in twice {
        redeemed_twice.push(|| format!("code {code} redeemed successfully {n} times"));
    }

    let mut five_xx = Violations::default();
    let mut unexpected = Violations::default();
    for (label, n) in &summary.unexpected {
        unexpected.count += n.saturating_sub(1);
        unexpected.push(|| format!("{n}× {label}"));
    }
    for (label, n) in &summary.answers {
        if label.starts_with('5') {
            five_xx.count += n.saturating_sub(1);
            five_xx.push(|| format!("{n}× {label}"));
        }
    }
    let mut transport = Violations::default();
    if summary.transport_errors > 0 {
        transport.count = summary.transport_errors - 1;
        transport.push(|| summary.error_samples.join(" | "));
    }

    vec![
        Check::new(
            "batch-total-limit",
            &total,
            format!("{} batch(es) within total_limit", codes_per_batch.len()),
        ),
        Check::new(
            "per-user-limit",
            &per_user,
            format!("{} user(s) within per_user_limit", codes_per_user.len()),
        ),
        Check::new(
            "unique-codes",
            &unique,
            format!("{} distinct codes", seen_codes.len()),
        ),
        Check::new(
            "single-redemption",
            &redeemed_twice,
            format!("{} code(s) redeemed once each", redeemed.len()),
        ),
        Check::new(
            "replays-identical",
            &obs.replay_mismatches,
            format!("{} replay(s) byte-identical", obs.replays_checked),
        ),
        Check::new(
            "list-consistency",
            &obs.list_violations,
            format!("{} list answer(s) consistent", obs.lists_checked),
        ),
        Check::new("no-5xx", &five_xx, "no 5xx answers".into()),
        Check::new(
            "no-transport-errors",
            &transport,
            "every request got an answer".into(),
        ),
        Check::new(
            "expected-answers",
            &unexpected,
            "every answer was one the scenario allows".into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use std::time::Duration;

    fn issued(batch: i64, user: &str, code: &str) -> Issued {
        Issued {
            batch_id: batch,
            user_id: user.into(),
            code: code.into(),
        }
    }

    fn batch(id: i64, total: u64, per_user: u64, prefill: u64) -> BatchLimits {
        BatchLimits {
            id,
            total_limit: total,
            per_user_limit: per_user,
            external_prefill: prefill,
        }
    }

    fn summary(f: impl FnOnce(&mut Stats)) -> Summary {
        let mut s = match Stats::new() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        f(&mut s);
        s.summary(Duration::from_secs(1))
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn clean_run_passes() {
        let mut obs = Observations::default();
        obs.issued.push(issued(1, "a", "C1"));
        obs.issued.push(issued(1, "b", "C2"));
        obs.redeemed.push("C1".into());
        obs.replays_checked = 3;
        let s = summary(|s| {
            s.record_answer(200, "200".into(), Duration::from_millis(1), true);
            s.record_answer(
                409,
                "409 BATCH_LIMIT_REACHED".into(),
                Duration::from_millis(1),
                true,
            );
        });
        let checks = check(&[batch(1, 2, 1, 0)], &obs, &s);
        assert!(all_ok(&checks), "{checks:?}");
    }

    #[test]
    fn over_total_limit_counts_prefill_and_distinct_codes() {
        let mut obs = Observations::default();
        obs.issued.push(issued(1, "a", "C1"));
        obs.issued.push(issued(1, "b", "C2"));
        let s = summary(|_| {});
        assert!(all_ok(&check(&[batch(1, 12, 1, 10)], &obs, &s)));
        let checks = check(&[batch(1, 11, 1, 10)], &obs, &s);
        assert_eq!(failed(&checks), vec!["batch-total-limit"]);
    }

    #[test]
    fn per_user_limit_and_unknown_batch() {
        let mut obs = Observations::default();
        obs.issued.push(issued(1, "a", "C1"));
        obs.issued.push(issued(1, "a", "C2"));
        obs.issued.push(issued(2, "a", "C3"));
        let s = summary(|_| {});
        let checks = check(&[batch(1, 100, 1, 0)], &obs, &s);
        assert_eq!(failed(&checks), vec!["batch-total-limit", "per-user-limit"]);
        assert!(all_ok(&check(
            &[batch(1, 100, 2, 0), batch(2, 1, 1, 0)],
            &obs,
            &s
        )));
    }

    #[test]
    fn a_code_of_an_earlier_run_is_flagged() {
        let earlier: HashSet<String> = ["C1".to_owned(), "C2".to_owned()].into();
        let mut obs = Observations::default();
        obs.issued.push(issued(1, "a", "C3"));
        let clean = codes_new_across_runs(&earlier, &obs);
        assert!(clean.ok, "{clean:?}");
        obs.issued.push(issued(1, "b", "C2"));
        let again = codes_new_across_runs(&earlier, &obs);
        assert!(!again.ok);
        assert!(again.detail.contains("code C2"), "{again:?}");
    }

    #[test]
    fn same_code_twice_is_flagged() {
        let mut obs = Observations::default();
        obs.issued.push(issued(1, "a", "C1"));
        obs.issued.push(issued(1, "b", "C1"));
        let s = summary(|_| {});
        let checks = check(&[batch(1, 100, 1, 0)], &obs, &s);
        assert_eq!(failed(&checks), vec!["unique-codes"]);
    }

    #[test]
    fn double_redemption_replay_mismatch_and_5xx() {
        let mut obs = Observations::default();
        obs.redeemed.push("C1".into());
        obs.redeemed.push("C2".into());
        obs.redeemed.push("C1".into());
        obs.replays_checked = 2;
        obs.replay_mismatches.push(|| "key k: body differs".into());
        obs.list_violations.push(|| "wrong user".into());
        let s = summary(|s| {
            s.record_answer(503, "503".into(), Duration::from_millis(1), false);
            s.record_answer(503, "503".into(), Duration::from_millis(1), false);
            s.record_transport_error("refused".into());
        });
        let checks = check(&[], &obs, &s);
        assert_eq!(
            failed(&checks),
            vec![
                "single-redemption",
                "replays-identical",
                "list-consistency",
                "no-5xx",
                "no-transport-errors",
                "expected-answers"
            ]
        );
        let five = checks.iter().find(|c| c.name == "no-5xx");
        assert!(five.is_some_and(|c| c.detail.starts_with("2 violation(s)")));
    }

    #[test]
    fn violations_keep_few_samples() {
        let mut v = Violations::default();
        for i in 0..100 {
            v.push(|| i.to_string());
        }
        assert_eq!(v.count, 100);
        assert_eq!(v.samples.len(), MAX_SAMPLES);
    }
}
