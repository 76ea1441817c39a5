use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::cli::{Bounds, Mix, Scenario, DEFAULT_REQUESTS};
use crate::client::{Answer, Client};
use crate::invariants::{self, BatchLimits, Check, Issued, Observations};
use crate::stats::{Stats, Summary};

pub const BATCHES_PATH: &str = "/v1/coupon-batches/";
pub const ISSUE_PATH: &str = "/v1/coupons/issue/";
pub const REDEEM_PATH: &str = "/v1/coupons/redeem/";
pub const LIST_PATH: &str = "/v1/coupons/";
pub const PING_PATH: &str = "/healthz";

/// Room left in batches that should never run out, on top of what the run can possibly issue.
const HEADROOM: u64 = 1_000_000_000;
/// Users and coupons per user created for the `list` scenario.
const LIST_USERS: u64 = 20;
const LIST_PER_USER: u64 = 10;
/// The server caps list answers at this many items.
const LIST_PAGE_MAX: usize = 50;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub concurrency: usize,
    pub bounds: Bounds,
    pub prefill: u64,
    /// Requests in flight during unmeasured setup (prefill, pools).
    pub setup_concurrency: usize,
    pub flash_limit: Option<u64>,
    pub mix: Mix,
    /// Unique per run, so keys and user ids never collide with earlier runs on the same server.
    pub tag: String,
    /// Shown in front of progress bars.
    pub label: String,
    pub quiet: bool,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub summary: Summary,
    pub checks: Vec<Check>,
    pub batches: Vec<BatchLimits>,
    pub notes: Vec<String>,
    /// Coupons put into the batch before the measured phase, and how fast that went.
    pub prefill: Option<PrefillReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PrefillReport {
    pub coupons: u64,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    pub concurrency: usize,
}

/// One setup-issued coupon together with the exact exchange, for redeem and replay.
#[derive(Debug, Clone)]
struct PoolEntry {
    key: String,
    user_id: String,
    request: Arc<[u8]>,
    status: u16,
    response: Vec<u8>,
    code: String,
}

#[derive(Debug, Clone)]
enum Op {
    Issue {
        batch_id: i64,
        user_id: String,
        allowed: &'static [&'static str],
    },
    Redeem {
        code: String,
        allowed: &'static [&'static str],
    },
    Replay {
        idx: usize,
    },
    List {
        user_id: String,
        status: Option<&'static str>,
    },
    Ping,
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    method: Method,
    path: String,
    key: Option<String>,
    body: Option<Arc<[u8]>>,
}

/// Everything a measured request needs, built during setup and shared read-only by workers.
struct Workload {
    scenario: Scenario,
    tag: String,
    batch_id: i64,
    pool: Vec<PoolEntry>,
    list_users: Vec<String>,
    /// list: what each user holds, known exactly because nothing changes while measuring.
    list_expect: HashMap<String, Holdings>,
    mix: Mix,
    /// mixed: issue requests draw users from this many, so some hit per_user_limit.
    mixed_issue_users: u64,
}

/// A user's coupons by status.
#[derive(Debug, Clone, Default)]
struct Holdings {
    issued: BTreeSet<String>,
    redeemed: BTreeSet<String>,
}

#[derive(Deserialize)]
struct CouponBody {
    code: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    issued_to: Option<String>,
    #[serde(default)]
    redeemed_by: Option<String>,
}

#[derive(Deserialize)]
struct ListBody {
    items: Vec<CouponBody>,
}

#[derive(Deserialize)]
struct BatchBody {
    id: i64,
}

/// A batch set up for measured runs: created, and prefilled when asked.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `external_prefill` counts every coupon put in before the next run: the prefill and
    /// what earlier runs on this batch issued.
    pub batch: BatchLimits,
    pub prefill: Option<PrefillReport>,
    notes: Vec<String>,
    /// Codes the earlier runs on this batch were handed, for the cross-run check.
    earlier_codes: HashSet<String>,
}

/// Whether later repeats may measure on the batch of the first. A flash sale's batch is
/// sold out after its run, so every repeat of it gets (and prefills) a batch of its own.
pub fn batch_is_reusable(scenario: Scenario) -> bool {
    scenario != Scenario::FlashSale
}

/// Creates the run's batch and fills it with `--prefill` coupons (unmeasured).
pub async fn prepare(client: &Client, cfg: &RunConfig) -> Result<Prepared> {
    let retries_before = client.setup_retries();
    let setup_conc = cfg.setup_concurrency.max(1);
    let requests = cfg.bounds.requests;
    let mut notes = Vec::new();
    let (total_limit, per_user_limit) = match cfg.scenario {
        Scenario::FlashSale => {
            let limit = cfg
                .flash_limit
                .unwrap_or_else(|| requests.map_or(1000, |r| (r / 10).max(1)));
            (cfg.prefill + limit, 1)
        }
        Scenario::List => (cfg.prefill + HEADROOM, LIST_PER_USER),
        Scenario::Mixed => (cfg.prefill + HEADROOM, 2),
        _ => (cfg.prefill + HEADROOM, 1),
    };
    let mut batch = create_batch(client, cfg, total_limit, per_user_limit).await?;

    let mut prefill_report = None;
    if cfg.prefill > 0 {
        let started = Instant::now();
        let n = prefill(client, cfg, batch.id, cfg.prefill, setup_conc)
            .await
            .context("prefilling the batch over HTTP")?;
        let secs = started.elapsed().as_secs_f64();
        batch.external_prefill = n;
        let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
        notes.push(format!(
            "prefill: {n} coupons issued over HTTP in {secs:.1} s ({rate:.0}/s at concurrency {setup_conc}), not measured"
        ));
        prefill_report = Some(PrefillReport {
            coupons: n,
            elapsed_s: secs,
            rate_per_s: rate,
            concurrency: setup_conc,
        });
    }
    note_setup_retries(client, retries_before, "preparing the batch", &mut notes);
    Ok(Prepared {
        batch,
        prefill: prefill_report,
        notes,
        earlier_codes: HashSet::new(),
    })
}

/// Adds a note when setup requests since `before` had to be retried after a 503.
fn note_setup_retries(client: &Client, before: u64, what: &str, notes: &mut Vec<String>) {
    let retried = client.setup_retries() - before;
    if retried > 0 {
        notes.push(format!(
            "{what}: {retried} unmeasured request(s) answered 503 (load shed) and were retried with their key"
        ));
    }
}

/// One run on a batch of its own: `prepare`, then `run_on`.
pub async fn run(client: &Client, cfg: &RunConfig) -> Result<RunOutcome> {
    let mut prepared = prepare(client, cfg).await?;
    run_on(client, cfg, &mut prepared).await
}

/// One measured run on a prepared batch: the scenario's own setup (pools, list users), the
/// measured phase, and the invariant checks. Afterwards the batch counts what this run
/// issued into it, so a next run on it checks the limits against everything it holds.
pub async fn run_on(
    client: &Client,
    cfg: &RunConfig,
    prepared: &mut Prepared,
) -> Result<RunOutcome> {
    let setup_conc = cfg.setup_concurrency.max(1);
    let requests = cfg.bounds.requests;
    let planned = requests.unwrap_or(DEFAULT_REQUESTS);
    let mut obs = Observations::default();
    let retries_before = client.setup_retries();
    let mut notes = std::mem::take(&mut prepared.notes);
    let batch = prepared.batch.clone();
    if batch.external_prefill > prepared.prefill.as_ref().map_or(0, |p| p.coupons) {
        notes.push(format!(
            "the batch held {} coupons when this run started (prefill and earlier runs)",
            batch.external_prefill
        ));
    }

    let mut work = Workload {
        scenario: cfg.scenario,
        tag: cfg.tag.clone(),
        batch_id: batch.id,
        pool: Vec::new(),
        list_users: Vec::new(),
        list_expect: HashMap::new(),
        mix: cfg.mix,
        mixed_issue_users: 1,
    };
    let mut limit = requests.unwrap_or(u64::MAX);

    match cfg.scenario {
        Scenario::Issue | Scenario::FlashSale | Scenario::Ping => {}
        Scenario::Redeem | Scenario::Replay => {
            let tag = cfg.tag.clone();
            let (pool, o) = issue_many(
                client,
                cfg,
                batch.id,
                "pool",
                planned,
                setup_conc,
                Arc::new(move |i| format!("u-{tag}-pool-{i}")),
                true,
            )
            .await
            .context("issuing the coupon pool")?;
            obs.merge(o);
            if cfg.scenario == Scenario::Redeem {
                limit = limit.min(pool.len() as u64);
                if requests.is_none() {
                    notes.push(format!(
                        "at most {} redemptions (the pool size) regardless of --duration",
                        pool.len()
                    ));
                }
            }
            work.pool = pool;
        }
        Scenario::List => {
            let tag = cfg.tag.clone();
            let (pool, o) = issue_many(
                client,
                cfg,
                batch.id,
                "list users",
                LIST_USERS * LIST_PER_USER,
                setup_conc,
                Arc::new(move |i| format!("lu-{tag}-{}", i % LIST_USERS)),
                false,
            )
            .await
            .context("issuing coupons for list users")?;
            obs.merge(o);
            // Every other coupon of each user redeemed, so each user has some of both and
            // the status filter has something to separate.
            let mut to_redeem = Vec::new();
            for (i, entry) in pool.into_iter().enumerate() {
                let holdings = work.list_expect.entry(entry.user_id.clone()).or_default();
                if (i as u64 / LIST_USERS).is_multiple_of(2) {
                    holdings.redeemed.insert(entry.code.clone());
                    to_redeem.push(entry);
                } else {
                    holdings.issued.insert(entry.code.clone());
                }
            }
            obs.merge(redeem_many(client, cfg, to_redeem, setup_conc).await?);
            work.list_users = (0..LIST_USERS)
                .map(|i| format!("lu-{}-{i}", cfg.tag))
                .collect();
        }
        Scenario::Mixed => {
            let total = u64::from(cfg.mix.total().max(1));
            let side = u64::from(cfg.mix.redeem.max(cfg.mix.replay).max(cfg.mix.list));
            let pool_size = (planned * side / total).max(1);
            let tag = cfg.tag.clone();
            let (pool, o) = issue_many(
                client,
                cfg,
                batch.id,
                "pool",
                pool_size,
                setup_conc,
                Arc::new(move |i| format!("u-{tag}-pool-{i}")),
                true,
            )
            .await
            .context("issuing the coupon pool")?;
            obs.merge(o);
            work.list_users = pool.iter().map(|p| p.user_id.clone()).collect();
            work.pool = pool;
            // Four attempts per user on average against a limit of two: the per-user check
            // is exercised under concurrency, not only in theory.
            let issues = planned * u64::from(cfg.mix.issue) / total;
            work.mixed_issue_users = (issues / 4).max(1);
        }
    }

    note_setup_retries(client, retries_before, "the run's setup", &mut notes);
    let work = Arc::new(work);
    let (stats, measured_obs, elapsed) = measure(client, work.clone(), cfg, limit).await?;
    obs.merge(measured_obs);
    let summary = stats.summary(elapsed);

    let batches = vec![batch];
    let mut checks = invariants::check(&batches, &obs, &summary);
    if cfg.scenario == Scenario::FlashSale {
        checks.push(sold_out_check(&batches[0], &obs, &summary));
        let won = summary.answers.get("200").copied().unwrap_or(0);
        notes.push(format!(
            "{won} of {} requests won a coupon (total_limit {}, {} prefilled)",
            summary.requests, batches[0].total_limit, cfg.prefill
        ));
    }
    if cfg.scenario == Scenario::Redeem && summary.requests < requests.unwrap_or(0) {
        notes.push(format!(
            "stopped after {} redemptions (the pool ran out)",
            summary.requests
        ));
    }
    if !prepared.earlier_codes.is_empty() {
        checks.push(invariants::codes_new_across_runs(
            &prepared.earlier_codes,
            &obs,
        ));
    }
    prepared.batch.external_prefill += distinct_codes(&obs, prepared.batch.id);
    prepared
        .earlier_codes
        .extend(obs.issued.iter().map(|i| i.code.clone()));
    Ok(RunOutcome {
        summary,
        checks,
        batches,
        notes,
        prefill: prepared.prefill.clone(),
    })
}

/// How many different codes the client saw issued from `batch_id`.
fn distinct_codes(obs: &Observations, batch_id: i64) -> u64 {
    let mut codes: Vec<&str> = obs
        .issued
        .iter()
        .filter(|i| i.batch_id == batch_id)
        .map(|i| i.code.as_str())
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes.len() as u64
}

/// A refusal for BATCH_LIMIT_REACHED is only honest once the batch really is full.
fn sold_out_check(batch: &BatchLimits, obs: &Observations, summary: &Summary) -> Check {
    let refused = summary
        .answers
        .get("409 BATCH_LIMIT_REACHED")
        .copied()
        .unwrap_or(0);
    let held = distinct_codes(obs, batch.id) + batch.external_prefill;
    let ok = refused == 0 || held >= batch.total_limit;
    Check {
        name: "sold-out-when-refused",
        ok,
        detail: if ok {
            format!("{held} of {} sold, {refused} refused", batch.total_limit)
        } else {
            format!(
                "{refused} refused with BATCH_LIMIT_REACHED but only {held} of {} sold",
                batch.total_limit
            )
        },
    }
}

async fn create_batch(
    client: &Client,
    cfg: &RunConfig,
    total_limit: u64,
    per_user_limit: u64,
) -> Result<BatchLimits> {
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .replace_nanosecond(0)
        .context("truncating timestamp")?
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting expires_at")?;
    let mut body = json!({
        "name": format!("bench {} {}", cfg.scenario.name(), cfg.tag),
        "per_user_limit": per_user_limit,
        "total_limit": total_limit,
        "expires_at": expires,
    });
    // Flash sales use percent discounts so both discount types get some traffic.
    if cfg.scenario == Scenario::FlashSale {
        body["discount_type"] = json!("percent");
        body["percent"] = json!(20);
    } else {
        body["discount_type"] = json!("fixed");
        body["amount"] = json!(500);
    }
    let bytes = serde_json::to_vec(&body)?;
    let ans = client
        .post_expect(
            BATCHES_PATH,
            &format!("bench-{}-batch", cfg.tag),
            &bytes,
            StatusCode::CREATED,
        )
        .await
        .context("creating the batch")?;
    let parsed: BatchBody = serde_json::from_slice(&ans.body)
        .with_context(|| format!("batch answer without id: {}", ans.body_text()))?;
    Ok(BatchLimits {
        id: parsed.id,
        total_limit,
        per_user_limit,
        external_prefill: 0,
    })
}

type UserFn = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// Unmeasured bulk issuance; `keep` holds on to the raw exchanges for later replay.
#[allow(clippy::too_many_arguments)]
async fn issue_many(
    client: &Client,
    cfg: &RunConfig,
    batch_id: i64,
    what: &str,
    count: u64,
    concurrency: usize,
    user: UserFn,
    keep: bool,
) -> Result<(Vec<PoolEntry>, Observations)> {
    let bar = setup_bar(cfg, &format!("setup: {what}"), Some(count));
    let client = client.clone();
    let tag = cfg.tag.clone();
    let prefix = what.replace(' ', "-");
    let entries = for_each_concurrent(count, concurrency, bar.clone(), move |i| {
        let client = client.clone();
        let user_id = user(i);
        let key = format!("bench-{tag}-{prefix}-{i}");
        async move {
            let request: Arc<[u8]> =
                serde_json::to_vec(&json!({"batch_id": batch_id, "user_id": user_id}))?.into();
            let ans = client
                .post_expect(ISSUE_PATH, &key, &request, StatusCode::OK)
                .await?;
            let coupon: CouponBody = serde_json::from_slice(&ans.body)
                .with_context(|| format!("issue answer without code: {}", ans.body_text()))?;
            Ok(PoolEntry {
                key,
                user_id,
                request,
                status: ans.status,
                response: if keep { ans.body } else { Vec::new() },
                code: coupon.code,
            })
        }
    })
    .await;
    bar.finish_and_clear();
    let entries = entries?;
    let obs = Observations {
        issued: entries
            .iter()
            .map(|e| Issued {
                batch_id,
                user_id: e.user_id.clone(),
                code: e.code.clone(),
            })
            .collect(),
        ..Observations::default()
    };
    Ok((entries, obs))
}

/// Unmeasured bulk issuance that keeps nothing but the count, so a million coupons cost no
/// memory: each to its own user, so neither limit can refuse them.
async fn prefill(
    client: &Client,
    cfg: &RunConfig,
    batch_id: i64,
    count: u64,
    concurrency: usize,
) -> Result<u64> {
    let bar = setup_bar(cfg, "prefill", Some(count));
    let client = client.clone();
    let tag = cfg.tag.clone();
    let done = for_each_concurrent(count, concurrency, bar.clone(), move |i| {
        let client = client.clone();
        let key = format!("bench-{tag}-prefill-{i}");
        let body =
            serde_json::to_vec(&json!({"batch_id": batch_id, "user_id": format!("pf-{tag}-{i}")}));
        async move {
            client
                .post_expect(ISSUE_PATH, &key, &body?, StatusCode::OK)
                .await?;
            Ok(())
        }
    })
    .await;
    bar.finish_and_clear();
    Ok(done?.len() as u64)
}

async fn redeem_many(
    client: &Client,
    cfg: &RunConfig,
    entries: Vec<PoolEntry>,
    concurrency: usize,
) -> Result<Observations> {
    let bar = setup_bar(cfg, "setup: redeem", Some(entries.len() as u64));
    let client = client.clone();
    let tag = cfg.tag.clone();
    let entries = Arc::new(entries);
    let list = entries.clone();
    let codes = for_each_concurrent(entries.len() as u64, concurrency, bar.clone(), move |i| {
        let client = client.clone();
        let list = list.clone();
        let tag = tag.clone();
        async move {
            let e = usize::try_from(i)
                .ok()
                .and_then(|i| list.get(i))
                .ok_or_else(|| anyhow!("redeem index {i} out of range"))?;
            let body = serde_json::to_vec(&json!({
                "code": e.code,
                "order_id": format!("so-{tag}-{i}"),
                "user_id": e.user_id,
            }))?;
            client
                .post_expect(
                    REDEEM_PATH,
                    &format!("bench-{tag}-setup-redeem-{i}"),
                    &body,
                    StatusCode::OK,
                )
                .await?;
            Ok(e.code.clone())
        }
    })
    .await;
    bar.finish_and_clear();
    Ok(Observations {
        redeemed: codes?,
        ..Observations::default()
    })
}

/// Runs `f(0..count)` on `concurrency` tasks, results in index order; the first error stops
/// the others from starting new work.
async fn for_each_concurrent<T, F, Fut>(
    count: u64,
    concurrency: usize,
    bar: ProgressBar,
    f: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let f = f.clone();
        let next = next.clone();
        let failed = failed.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match f(i).await {
                    Ok(v) => out.push((i, v)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                bar.inc(1);
            }
            Ok(out)
        }));
    }
    let mut all = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => all.extend(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("setup task panicked: {e}"));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

/// The measured phase: `concurrency` workers pull request numbers from one counter until the
/// request bound or the deadline is reached.
async fn measure(
    client: &Client,
    work: Arc<Workload>,
    cfg: &RunConfig,
    limit: u64,
) -> Result<(Stats, Observations, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = cfg.bounds.duration.map(|d| started + d);
    let bar = measure_bar(cfg, limit, done.clone(), started);

    let mut tasks = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let client = client.clone();
        let work = work.clone();
        let next = next.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::new()?;
            let mut obs = Observations::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                let Some(step) = work.step(n)? else {
                    break;
                };
                let sent = client
                    .send(
                        step.method.clone(),
                        &step.path,
                        step.key.as_deref(),
                        step.body.as_deref(),
                    )
                    .await;
                match sent {
                    Ok(ans) => work.judge(&step, &ans, &mut stats, &mut obs),
                    Err(e) => stats.record_transport_error(error_chain(&e)),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((stats, obs))
        }));
    }
    let mut total = Stats::new()?;
    let mut obs = Observations::default();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok((s, o))) => {
                total.merge(&s)?;
                obs.merge(o);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("worker panicked: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((total, obs, elapsed))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Cheap, well-mixed hash so request `n` always does the same thing without a shared RNG.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MixedOp {
    Issue,
    Redeem,
    Replay,
    List,
}

fn pick_mixed(mix: &Mix, h: u64) -> MixedOp {
    let total = u64::from(mix.total().max(1));
    let mut r = h % total;
    for (w, op) in [
        (mix.issue, MixedOp::Issue),
        (mix.redeem, MixedOp::Redeem),
        (mix.replay, MixedOp::Replay),
        (mix.list, MixedOp::List),
    ] {
        let w = u64::from(w);
        if r < w {
            return op;
        }
        r -= w;
    }
    MixedOp::Issue
}

const LIST_STATUSES: [Option<&str>; 3] = [None, Some("issued"), Some("redeemed")];

impl Workload {
    /// The request numbered `n`; `None` once a finite workload (the redeem pool) is used up.
    fn step(&self, n: u64) -> Result<Option<Step>> {
        let tag = &self.tag;
        let step = match self.scenario {
            Scenario::Issue => self.issue(format!("u-{tag}-{n}"), n, &[])?,
            Scenario::FlashSale => {
                self.issue(format!("u-{tag}-{n}"), n, &["BATCH_LIMIT_REACHED"])?
            }
            Scenario::Redeem => match usize::try_from(n).ok().and_then(|i| self.pool.get(i)) {
                Some(e) => self.redeem(e, n, &[])?,
                None => return Ok(None),
            },
            Scenario::Replay => self.replay(n as usize % self.pool.len().max(1)),
            Scenario::List => {
                let h = splitmix64(n);
                self.list(h)
            }
            Scenario::Ping => Step {
                op: Op::Ping,
                method: Method::GET,
                path: PING_PATH.into(),
                key: None,
                body: None,
            },
            Scenario::Mixed => {
                let h = splitmix64(n);
                let h2 = splitmix64(h);
                let pool_len = self.pool.len().max(1) as u64;
                let pick = (h2 % pool_len) as usize;
                match pick_mixed(&self.mix, h) {
                    MixedOp::Issue => {
                        let user = format!("mu-{tag}-{}", h2 % self.mixed_issue_users.max(1));
                        self.issue(user, n, &["PER_USER_LIMIT_REACHED"])?
                    }
                    MixedOp::Redeem => match self.pool.get(pick) {
                        Some(e) => self.redeem(e, n, &["COUPON_ALREADY_REDEEMED"])?,
                        None => return Ok(None),
                    },
                    MixedOp::Replay => self.replay(pick),
                    MixedOp::List => self.list(h2),
                }
            }
        };
        Ok(Some(step))
    }

    fn issue(&self, user_id: String, n: u64, allowed: &'static [&'static str]) -> Result<Step> {
        let body = serde_json::to_vec(&json!({"batch_id": self.batch_id, "user_id": user_id}))?;
        Ok(Step {
            op: Op::Issue {
                batch_id: self.batch_id,
                user_id,
                allowed,
            },
            method: Method::POST,
            path: ISSUE_PATH.into(),
            key: Some(format!("bench-{}-{n}", self.tag)),
            body: Some(body.into()),
        })
    }

    fn redeem(&self, e: &PoolEntry, n: u64, allowed: &'static [&'static str]) -> Result<Step> {
        let body = serde_json::to_vec(&json!({
            "code": e.code,
            "order_id": format!("o-{}-{n}", self.tag),
            "user_id": e.user_id,
        }))?;
        Ok(Step {
            op: Op::Redeem {
                code: e.code.clone(),
                allowed,
            },
            method: Method::POST,
            path: REDEEM_PATH.into(),
            key: Some(format!("bench-{}-{n}", self.tag)),
            body: Some(body.into()),
        })
    }

    fn replay(&self, idx: usize) -> Step {
        let (key, body) = match self.pool.get(idx) {
            Some(e) => (Some(e.key.clone()), Some(e.request.clone())),
            None => (None, None),
        };
        Step {
            op: Op::Replay { idx },
            method: Method::POST,
            path: ISSUE_PATH.into(),
            key,
            body,
        }
    }

    fn list(&self, h: u64) -> Step {
        let users = self.list_users.len().max(1) as u64;
        let user_id = self
            .list_users
            .get((h % users) as usize)
            .cloned()
            .unwrap_or_default();
        let status = LIST_STATUSES[((h / users) % 3) as usize];
        let path = match status {
            Some(s) => format!("{LIST_PATH}?user_id={user_id}&status={s}"),
            None => format!("{LIST_PATH}?user_id={user_id}"),
        };
        Step {
            op: Op::List { user_id, status },
            method: Method::GET,
            path,
            key: None,
            body: None,
        }
    }

    /// Tallies one answer and records what the invariant checks need from it.
    fn judge(&self, step: &Step, ans: &Answer, stats: &mut Stats, obs: &mut Observations) {
        let code = ans.error_code();
        let allowed_error = |allowed: &[&str]| {
            ans.status == 409 && code.as_deref().is_some_and(|c| allowed.contains(&c))
        };
        let expected = match &step.op {
            Op::Issue {
                batch_id,
                user_id,
                allowed,
            } => {
                if ans.status == 200 {
                    match serde_json::from_slice::<CouponBody>(&ans.body) {
                        // A fresh key must never be answered from the idempotency store.
                        Ok(c) if !ans.replayed => {
                            obs.issued.push(Issued {
                                batch_id: *batch_id,
                                user_id: user_id.clone(),
                                code: c.code,
                            });
                            true
                        }
                        _ => false,
                    }
                } else {
                    allowed_error(allowed)
                }
            }
            Op::Redeem { code: c, allowed } => {
                if ans.status == 200 {
                    match serde_json::from_slice::<CouponBody>(&ans.body) {
                        Ok(body)
                            if !ans.replayed
                                && body.code == *c
                                && body.status.as_deref() == Some("redeemed") =>
                        {
                            obs.redeemed.push(c.clone());
                            true
                        }
                        _ => false,
                    }
                } else {
                    allowed_error(allowed)
                }
            }
            Op::Replay { idx } => {
                obs.replays_checked += 1;
                match self.pool.get(*idx) {
                    Some(orig) => {
                        let same = ans.status == orig.status && ans.body == orig.response;
                        if !same || !ans.replayed {
                            obs.replay_mismatches.push(|| {
                                let mut why = Vec::new();
                                if ans.status != orig.status {
                                    why.push(format!("status {} != {}", ans.status, orig.status));
                                }
                                if ans.body != orig.response {
                                    why.push(format!("body {:?}", ans.body_text()));
                                }
                                if !ans.replayed {
                                    why.push("no Idempotent-Replayed: true".into());
                                }
                                format!("key {}: {}", orig.key, why.join(", "))
                            });
                        }
                        ans.status == orig.status
                    }
                    None => false,
                }
            }
            Op::List { user_id, status } => {
                obs.lists_checked += 1;
                if ans.status == 200 {
                    match serde_json::from_slice::<ListBody>(&ans.body) {
                        Ok(list) => {
                            check_list(user_id, *status, &list, obs);
                            if let Some(holdings) = self.list_expect.get(user_id) {
                                check_list_exact(user_id, *status, &list, holdings, obs);
                            }
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    false
                }
            }
            Op::Ping => ans.status == 200,
        };
        stats.record_answer(ans.status, ans.label(), ans.latency, expected);
    }
}

fn check_list(user_id: &str, status: Option<&str>, list: &ListBody, obs: &mut Observations) {
    if list.items.len() > LIST_PAGE_MAX {
        obs.list_violations.push(|| {
            format!(
                "user {user_id}: {} items > page max {LIST_PAGE_MAX}",
                list.items.len()
            )
        });
    }
    for item in &list.items {
        // The seed lists coupons issued to *or* redeemed by the user.
        if item.issued_to.as_deref() != Some(user_id)
            && item.redeemed_by.as_deref() != Some(user_id)
        {
            obs.list_violations.push(|| {
                format!(
                    "list for {user_id} returned coupon {} issued to {:?}, redeemed by {:?}",
                    item.code, item.issued_to, item.redeemed_by
                )
            });
        }
        if let Some(want) = status {
            if item.status.as_deref() != Some(want) {
                obs.list_violations.push(|| {
                    format!(
                        "list status={want} for {user_id} returned coupon {} with status {:?}",
                        item.code, item.status
                    )
                });
            }
        }
    }
}

/// The answer must hold exactly the coupons the user has with that status (all when no status
/// filter), when the whole set fits on one page.
fn check_list_exact(
    user_id: &str,
    status: Option<&str>,
    list: &ListBody,
    holdings: &Holdings,
    obs: &mut Observations,
) {
    let want: BTreeSet<&str> = match status {
        Some("issued") => holdings.issued.iter().map(String::as_str).collect(),
        Some("redeemed") => holdings.redeemed.iter().map(String::as_str).collect(),
        Some(_) => BTreeSet::new(),
        None => holdings
            .issued
            .iter()
            .chain(&holdings.redeemed)
            .map(String::as_str)
            .collect(),
    };
    if want.len() > LIST_PAGE_MAX {
        return;
    }
    let got: BTreeSet<&str> = list.items.iter().map(|i| i.code.as_str()).collect();
    if got != want || list.items.len() != want.len() {
        obs.list_violations.push(|| {
            let missing: Vec<&str> = want.difference(&got).copied().collect();
            let extra: Vec<&str> = got.difference(&want).copied().collect();
            format!(
                "list for {user_id} status={}: {} item(s), want {}; missing {missing:?}, unexpected {extra:?}",
                status.unwrap_or("*"),
                list.items.len(),
                want.len()
            )
        });
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
}

fn setup_bar(cfg: &RunConfig, what: &str, len: Option<u64>) -> ProgressBar {
    if cfg.quiet {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n).with_style(style(
            "{prefix} [{elapsed_precise}] {wide_bar:.yellow/blue} {pos}/{len} ({rate}, eta {eta})",
        )),
        None => ProgressBar::new_spinner().with_style(style("{prefix} {spinner} {elapsed}")),
    };
    bar.set_prefix(format!("{} {what}", cfg.label));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Count-based when a request bound exists, time-based otherwise; driven by a ticker reading
/// the shared counter so workers never touch the bar.
fn measure_bar(cfg: &RunConfig, limit: u64, done: Arc<AtomicU64>, started: Instant) -> ProgressBar {
    if cfg.quiet {
        return ProgressBar::hidden();
    }
    let by_count = cfg.bounds.requests.is_some() && limit != u64::MAX;
    let bar = if by_count {
        ProgressBar::new(limit).with_style(style(
            "{prefix} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} ({rate}) {msg}",
        ))
    } else {
        let ms = cfg
            .bounds
            .duration
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ProgressBar::new(ms).with_style(style(
            "{prefix} [{elapsed_precise}] {wide_bar:.cyan/blue} {msg}",
        ))
    };
    bar.set_prefix(cfg.label.clone());
    let ticker = bar.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !ticker.is_finished() {
            tick.tick().await;
            let n = done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            if by_count {
                ticker.set_position(n);
            } else {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                ticker.set_position(ms.min(ticker.length().unwrap_or(ms)));
                ticker.set_message(format!(
                    "{n} req, {:.0} req/s",
                    if secs > 0.0 { n as f64 / secs } else { 0.0 }
                ));
            }
        }
    });
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(scenario: Scenario) -> Workload {
        Workload {
            scenario,
            tag: "t".into(),
            batch_id: 7,
            pool: vec![PoolEntry {
                key: "bench-t-pool-0".into(),
                user_id: "u-t-pool-0".into(),
                request: Arc::from(&br#"{"batch_id":7,"user_id":"u-t-pool-0"}"#[..]),
                status: 200,
                response: br#"{"code":"C0","status":"issued"}"#.to_vec(),
                code: "C0".into(),
            }],
            list_users: vec!["u-t-pool-0".into()],
            list_expect: HashMap::new(),
            mix: Mix {
                issue: 60,
                redeem: 20,
                replay: 10,
                list: 10,
            },
            mixed_issue_users: 10,
        }
    }

    fn answer(status: u16, body: &[u8], replayed: bool) -> Answer {
        Answer {
            status,
            body: body.to_vec(),
            replayed,
            retry_after: None,
            latency: Duration::from_millis(1),
        }
    }

    fn stats() -> Stats {
        match Stats::new() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn step(w: &Workload, n: u64) -> Step {
        match w.step(n) {
            Ok(Some(s)) => s,
            other => panic!("no step: {other:?}"),
        }
    }

    #[test]
    fn mix_distribution_follows_weights() {
        let mix = Mix {
            issue: 60,
            redeem: 20,
            replay: 10,
            list: 10,
        };
        let mut counts = [0u32; 4];
        for n in 0..100_000u64 {
            let i = match pick_mixed(&mix, splitmix64(n)) {
                MixedOp::Issue => 0,
                MixedOp::Redeem => 1,
                MixedOp::Replay => 2,
                MixedOp::List => 3,
            };
            counts[i] += 1;
        }
        for (got, want) in counts.iter().zip([60_000, 20_000, 10_000, 10_000]) {
            assert!((*got as i64 - want).abs() < 1_000, "{counts:?}");
        }
    }

    #[test]
    fn redeem_pool_is_finite_and_keys_unique() {
        let w = workload(Scenario::Redeem);
        assert!(matches!(w.step(1), Ok(None)));
        let w = workload(Scenario::Issue);
        assert_ne!(step(&w, 1).key, step(&w, 2).key);
    }

    #[test]
    fn replay_resends_identical_bytes_and_judges_them() {
        let w = workload(Scenario::Replay);
        let s = step(&w, 5);
        assert_eq!(s.key.as_deref(), Some("bench-t-pool-0"));
        assert_eq!(s.body.as_deref(), Some(&w.pool[0].request[..]));

        let mut st = stats();
        let mut obs = Observations::default();
        w.judge(
            &s,
            &answer(200, &w.pool[0].response, true),
            &mut st,
            &mut obs,
        );
        w.judge(
            &s,
            &answer(200, br#"{"code":"C9"}"#, true),
            &mut st,
            &mut obs,
        );
        w.judge(
            &s,
            &answer(200, &w.pool[0].response, false),
            &mut st,
            &mut obs,
        );
        assert_eq!(obs.replays_checked, 3);
        assert_eq!(obs.replay_mismatches.count, 2);
        // A replayed answer is not a fresh issuance.
        assert!(obs.issued.is_empty());
    }

    #[test]
    fn flash_sale_allows_sold_out_only() {
        let w = workload(Scenario::FlashSale);
        let s = step(&w, 3);
        let mut st = stats();
        let mut obs = Observations::default();
        let sold_out = br#"{"error":{"code":"BATCH_LIMIT_REACHED","message":"x"}}"#;
        let per_user = br#"{"error":{"code":"PER_USER_LIMIT_REACHED","message":"x"}}"#;
        w.judge(
            &s,
            &answer(200, br#"{"code":"C1","status":"issued"}"#, false),
            &mut st,
            &mut obs,
        );
        w.judge(&s, &answer(409, sold_out, false), &mut st, &mut obs);
        w.judge(&s, &answer(409, per_user, false), &mut st, &mut obs);
        w.judge(
            &s,
            &answer(200, br#"{"code":"C2"}"#, true),
            &mut st,
            &mut obs,
        );
        assert_eq!(obs.issued.len(), 1);
        assert_eq!(st.unexpected.get("409 PER_USER_LIMIT_REACHED"), Some(&1));
        assert_eq!(st.unexpected.get("200"), Some(&1));
        assert_eq!(st.unexpected.len(), 2);
    }

    #[test]
    fn list_answers_are_checked() {
        let w = workload(Scenario::List);
        let s = Step {
            op: Op::List {
                user_id: "u-t-pool-0".into(),
                status: Some("issued"),
            },
            method: Method::GET,
            path: String::new(),
            key: None,
            body: None,
        };
        let mut st = stats();
        let mut obs = Observations::default();
        let good = br#"{"items":[{"code":"C0","status":"issued","issued_to":"u-t-pool-0"}]}"#;
        let bad = br#"{"items":[{"code":"C5","status":"redeemed","issued_to":"someone"}]}"#;
        w.judge(&s, &answer(200, good, false), &mut st, &mut obs);
        w.judge(&s, &answer(200, bad, false), &mut st, &mut obs);
        assert_eq!(obs.lists_checked, 2);
        assert_eq!(obs.list_violations.count, 2);
    }

    #[test]
    fn list_answers_must_match_what_the_user_holds() {
        let mut w = workload(Scenario::List);
        w.list_expect.insert(
            "u1".into(),
            Holdings {
                issued: ["A".to_string(), "B".to_string()].into(),
                redeemed: ["C".to_string()].into(),
            },
        );
        let list_step = |status: Option<&'static str>| Step {
            op: Op::List {
                user_id: "u1".into(),
                status,
            },
            method: Method::GET,
            path: String::new(),
            key: None,
            body: None,
        };
        let item = |code: &str, status: &str| {
            format!(r#"{{"code":"{code}","status":"{status}","issued_to":"u1"}}"#)
        };
        let body = |items: &[String]| format!(r#"{{"items":[{}]}}"#, items.join(","));
        let mut st = stats();
        let mut obs = Observations::default();
        let all = body(&[
            item("C", "redeemed"),
            item("B", "issued"),
            item("A", "issued"),
        ]);
        let issued = body(&[item("B", "issued"), item("A", "issued")]);
        let redeemed = body(&[item("C", "redeemed")]);
        for (status, text) in [
            (None, &all),
            (Some("issued"), &issued),
            (Some("redeemed"), &redeemed),
        ] {
            w.judge(
                &list_step(status),
                &answer(200, text.as_bytes(), false),
                &mut st,
                &mut obs,
            );
        }
        assert_eq!(obs.list_violations.count, 0, "{:?}", obs.list_violations);
        // A missing coupon, and a duplicated one, are both caught.
        w.judge(
            &list_step(Some("issued")),
            &answer(200, redeemed.as_bytes(), false),
            &mut st,
            &mut obs,
        );
        let dup = body(&[
            item("A", "issued"),
            item("A", "issued"),
            item("B", "issued"),
        ]);
        w.judge(
            &list_step(Some("issued")),
            &answer(200, dup.as_bytes(), false),
            &mut st,
            &mut obs,
        );
        assert_eq!(obs.list_violations.count, 3, "{:?}", obs.list_violations);
        // A coupon the user redeemed but did not receive belongs in their list.
        let w2 = workload(Scenario::Mixed);
        let mut obs2 = Observations::default();
        let theirs = br#"{"items":[{"code":"Z","status":"redeemed","issued_to":"other","redeemed_by":"u-t-pool-0"}]}"#;
        let s = Step {
            op: Op::List {
                user_id: "u-t-pool-0".into(),
                status: None,
            },
            method: Method::GET,
            path: String::new(),
            key: None,
            body: None,
        };
        w2.judge(&s, &answer(200, theirs, false), &mut st, &mut obs2);
        assert_eq!(obs2.list_violations.count, 0);
        assert_eq!(st.unexpected.len(), 0);
    }

    #[test]
    fn redeem_judgement() {
        let w = workload(Scenario::Redeem);
        let s = step(&w, 0);
        assert_eq!(s.path, REDEEM_PATH);
        let mut st = stats();
        let mut obs = Observations::default();
        w.judge(
            &s,
            &answer(200, br#"{"code":"C0","status":"redeemed"}"#, false),
            &mut st,
            &mut obs,
        );
        // Wrong coupon, still "issued", or a replay: none counts as a fresh redemption.
        w.judge(
            &s,
            &answer(200, br#"{"code":"C9","status":"redeemed"}"#, false),
            &mut st,
            &mut obs,
        );
        w.judge(
            &s,
            &answer(200, br#"{"code":"C0","status":"issued"}"#, false),
            &mut st,
            &mut obs,
        );
        w.judge(
            &s,
            &answer(200, br#"{"code":"C0","status":"redeemed"}"#, true),
            &mut st,
            &mut obs,
        );
        let again = br#"{"error":{"code":"COUPON_ALREADY_REDEEMED","message":"x"}}"#;
        w.judge(&s, &answer(409, again, false), &mut st, &mut obs);
        assert_eq!(obs.redeemed, vec!["C0".to_string()]);
        assert_eq!(st.unexpected.get("200"), Some(&3));
        assert_eq!(st.unexpected.get("409 COUPON_ALREADY_REDEEMED"), Some(&1));
    }

    #[test]
    fn list_and_mixed_steps_are_well_formed() {
        let w = workload(Scenario::List);
        for n in 0..50 {
            let s = step(&w, n);
            assert_eq!(s.method, Method::GET);
            assert!(
                s.path.starts_with("/v1/coupons/?user_id=u-t-pool-0"),
                "{}",
                s.path
            );
            assert!(s.key.is_none() && s.body.is_none());
        }
        let w = workload(Scenario::Mixed);
        let mut seen = std::collections::HashSet::new();
        for n in 0..200 {
            let s = step(&w, n);
            seen.insert(s.path.split('?').next().unwrap_or("").to_string());
            if s.method == Method::POST {
                assert!(s.key.is_some() && s.body.is_some());
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn sold_out_check_catches_undersell() {
        let batch = BatchLimits {
            id: 1,
            total_limit: 3,
            per_user_limit: 1,
            external_prefill: 1,
        };
        let mut obs = Observations::default();
        obs.issued.push(Issued {
            batch_id: 1,
            user_id: "a".into(),
            code: "C1".into(),
        });
        let mut st = stats();
        st.record_answer(
            409,
            "409 BATCH_LIMIT_REACHED".into(),
            Duration::from_millis(1),
            true,
        );
        let s = st.summary(Duration::from_secs(1));
        assert!(!sold_out_check(&batch, &obs, &s).ok);
        obs.issued.push(Issued {
            batch_id: 1,
            user_id: "b".into(),
            code: "C2".into(),
        });
        assert!(sold_out_check(&batch, &obs, &s).ok);
    }
}
