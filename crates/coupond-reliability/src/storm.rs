//! The retry storm. Every logical request (an issue into a small flash-sale batch, a
//! redeem of a coupon several callers race for, a batch creation) has its own
//! `Idempotency-Key` and is sent `copies` times: some copies back to back (so they run
//! concurrently on different workers), others scattered through the run (so they arrive
//! after the original finished, or after a crash). Copies of one key differ in JSON key
//! order and white space, which must not matter.
//!
//! A copy is sent until it gets a *final* answer: a transport error (server killed), a
//! `503` (database down or busy) or `409 REQUEST_IN_PROGRESS` is retried with the same key
//! and body, as a careful client would. Afterwards [`verify`] checks, key by key:
//!
//! * all final answers of a key are byte-identical, and at most one was not a replay
//!   (exactly one execution);
//! * one more retry of every key, after the storm (and after the last restart), is a
//!   replay of that same answer: nothing stuck, nothing lost;
//! * against the server's state through the API (`GET /v1/coupons/?user_id=`): each user
//!   holds exactly the coupons whose codes the client was answered with (an effect
//!   without an answer, or an answer without an effect, shows up here), no user over
//!   `per_user_limit`, the batch not over `total_limit` (and full if anyone was told
//!   `BATCH_LIMIT_REACHED`), every contested coupon redeemed exactly once, by the one
//!   caller that was answered `200`, with that caller's order id;
//! * and directly in the database: rows per batch, batches and idempotency records of
//!   this storm, exactly as many as there are effects and keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use coupond_bench::client::{Answer, Client};
use coupond_bench::invariants::Violations;
use coupond_bench::scenarios::{BATCHES_PATH, ISSUE_PATH, LIST_PATH, REDEEM_PATH};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::Database;

#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Unique per storm: every key, user and batch name carries it.
    pub tag: String,
    /// Users racing for the flash-sale batch.
    pub users: usize,
    /// Logical issue requests per user (more than `per_user_limit`, so the limit refuses).
    pub issues_per_user: usize,
    pub per_user_limit: u64,
    /// The flash-sale batch's size (less than the users want, so it sells out).
    pub total_limit: u64,
    /// Coupons issued before the storm, each then raced for by `redeem_contenders`.
    pub pool_coupons: usize,
    pub redeem_contenders: usize,
    /// Logical batch creations.
    pub batch_creates: usize,
    /// Times each logical request is sent.
    pub copies: usize,
    /// Copies in flight at once.
    pub concurrency: usize,
    /// A copy that has no final answer after this long is a stuck key.
    pub copy_deadline: Duration,
    pub seed: u64,
}

impl StormConfig {
    pub fn new(tag: &str) -> StormConfig {
        StormConfig {
            tag: tag.to_owned(),
            users: 120,
            issues_per_user: 3,
            per_user_limit: 2,
            total_limit: 160,
            pool_coupons: 80,
            redeem_contenders: 3,
            batch_creates: 8,
            copies: 4,
            concurrency: 32,
            copy_deadline: Duration::from_secs(90),
            seed: rand::random(),
        }
    }

    pub fn logical_requests(&self) -> usize {
        self.users * self.issues_per_user
            + self.pool_coupons * self.redeem_contenders
            + self.batch_creates
    }

    pub fn copies_total(&self) -> usize {
        self.logical_requests() * self.copies
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Issue { user: usize },
    Redeem { coupon: usize, order_id: String },
    CreateBatch,
}

#[derive(Debug, Clone)]
struct Logical {
    key: String,
    path: &'static str,
    /// The same request in different spellings (key order, white space), one per copy.
    variants: Vec<Vec<u8>>,
    kind: Kind,
}

#[derive(Debug, Clone)]
pub struct PoolCoupon {
    pub code: String,
    pub user: String,
}

/// A storm set up on a server: its batches, its pool, its logical requests.
pub struct Storm {
    pub cfg: StormConfig,
    pub flash_batch: i64,
    pub pool_batch: i64,
    pub pool: Vec<PoolCoupon>,
    logical: Vec<Logical>,
    /// Idempotency keys used by the setup (each leaves one record).
    pub setup_keys: usize,
    /// Copies answered finally so far (for a killer that strikes at a point of progress).
    pub progress: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct CouponBody {
    code: String,
    status: String,
    issued_to: Option<String>,
    redeemed_by: Option<String>,
    order_id: Option<String>,
}

#[derive(Deserialize)]
struct ListBody {
    items: Vec<CouponBody>,
}

fn user_name(tag: &str, i: usize) -> String {
    format!("st-{tag}-u{i}")
}

fn three_spellings(fields: &[(&str, Value)]) -> Vec<Vec<u8>> {
    let compact = |pairs: &[(&str, Value)], sep: &str, colon: &str| {
        let inner: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}{colon}{v}", json!(k)))
            .collect();
        format!("{{{}}}", inner.join(sep)).into_bytes()
    };
    let mut reversed = fields.to_vec();
    reversed.reverse();
    vec![
        compact(fields, ",", ":"),
        compact(&reversed, ", ", ": "),
        compact(fields, " ,\n  ", " : "),
    ]
}

/// Creates the storm's batches and its pool of coupons (no faults yet), and lays out its
/// logical requests.
pub async fn setup(client: &Client, cfg: StormConfig) -> Result<Storm> {
    let tag = cfg.tag.clone();
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(2))
        .replace_nanosecond(0)?
        .format(&time::format_description::well_known::Rfc3339)?;
    let batch = |name: String, total: u64, per_user: u64| {
        serde_json::to_vec(&json!({
            "name": name, "discount_type": "percent", "percent": 15,
            "per_user_limit": per_user, "total_limit": total, "expires_at": expires,
        }))
    };
    let created = client
        .post_expect(
            BATCHES_PATH,
            &format!("st-{tag}-setup-flash"),
            &batch(
                format!("storm {tag} flash"),
                cfg.total_limit,
                cfg.per_user_limit,
            )?,
            StatusCode::CREATED,
        )
        .await
        .context("creating the flash-sale batch")?;
    let flash_batch = batch_id(&created)?;
    let created = client
        .post_expect(
            BATCHES_PATH,
            &format!("st-{tag}-setup-pool"),
            &batch(format!("storm {tag} pool"), cfg.pool_coupons as u64, 1)?,
            StatusCode::CREATED,
        )
        .await
        .context("creating the pool batch")?;
    let pool_batch = batch_id(&created)?;

    // The pool: one coupon per pool user, issued 16 at a time.
    let mut pool = Vec::with_capacity(cfg.pool_coupons);
    for chunk in (0..cfg.pool_coupons).collect::<Vec<_>>().chunks(16) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let client = client.clone();
            let tag = tag.clone();
            tasks.push(tokio::spawn(async move {
                let user = format!("st-{tag}-p{i}");
                let body = serde_json::to_vec(&json!({"batch_id": pool_batch, "user_id": user}))?;
                let ans = client
                    .post_expect(
                        ISSUE_PATH,
                        &format!("st-{tag}-setup-pool-{i}"),
                        &body,
                        StatusCode::OK,
                    )
                    .await?;
                let coupon: CouponBody = serde_json::from_slice(&ans.body)?;
                anyhow::Ok(PoolCoupon {
                    code: coupon.code,
                    user,
                })
            }));
        }
        for t in tasks {
            pool.push(t.await.context("pool task")??);
        }
    }

    let mut logical = Vec::with_capacity(cfg.logical_requests());
    for u in 0..cfg.users {
        for j in 0..cfg.issues_per_user {
            logical.push(Logical {
                key: format!("st-{tag}-iss-{u}-{j}"),
                path: ISSUE_PATH,
                variants: three_spellings(&[
                    ("batch_id", json!(flash_batch)),
                    ("user_id", json!(user_name(&tag, u))),
                ]),
                kind: Kind::Issue { user: u },
            });
        }
    }
    for (c, coupon) in pool.iter().enumerate() {
        for j in 0..cfg.redeem_contenders {
            let order_id = format!("so-{tag}-{c}-{j}");
            // Every other contender spells the code in lower case: codes match in any case.
            let code = if j % 2 == 1 {
                coupon.code.to_ascii_lowercase()
            } else {
                coupon.code.clone()
            };
            logical.push(Logical {
                key: format!("st-{tag}-red-{c}-{j}"),
                path: REDEEM_PATH,
                variants: three_spellings(&[
                    ("code", json!(code)),
                    ("order_id", json!(order_id)),
                    ("user_id", json!(coupon.user)),
                ]),
                kind: Kind::Redeem {
                    coupon: c,
                    order_id,
                },
            });
        }
    }
    for j in 0..cfg.batch_creates {
        logical.push(Logical {
            key: format!("st-{tag}-batch-{j}"),
            path: BATCHES_PATH,
            variants: three_spellings(&[
                ("name", json!(format!("storm {tag} created {j}"))),
                ("discount_type", json!("fixed")),
                ("amount", json!(100 + j)),
                ("per_user_limit", json!(1)),
                ("total_limit", json!(10)),
                ("expires_at", json!(expires)),
            ]),
            kind: Kind::CreateBatch,
        });
    }
    Ok(Storm {
        setup_keys: 2 + cfg.pool_coupons,
        cfg,
        flash_batch,
        pool_batch,
        pool,
        logical,
        progress: Arc::new(AtomicU64::new(0)),
    })
}

fn batch_id(answer: &Answer) -> Result<i64> {
    #[derive(Deserialize)]
    struct Id {
        id: i64,
    }
    Ok(serde_json::from_slice::<Id>(&answer.body)
        .with_context(|| format!("batch answer without id: {}", answer.body_text()))?
        .id)
}

/// What the client saw, besides the final answers.
#[derive(Debug, Default)]
pub struct Counters {
    /// HTTP requests sent (each attempt of each copy, including those that failed).
    pub attempts: u64,
    pub transport_errors: u64,
    /// Answers that were retried: `503 <code>` and `409 REQUEST_IN_PROGRESS`, by label.
    pub retried: BTreeMap<String, u64>,
    /// Answers no client should get here (a 500, a 429, a 400...).
    pub unexpected: Violations,
    pub stuck: Violations,
}

impl Counters {
    fn merge(&mut self, other: Counters) {
        self.attempts += other.attempts;
        self.transport_errors += other.transport_errors;
        for (k, v) in other.retried {
            *self.retried.entry(k).or_default() += v;
        }
        self.unexpected.merge(other.unexpected);
        self.stuck.merge(other.stuck);
    }
}

/// The storm as it went: final answers per logical request, in the order they came.
pub struct StormRun {
    answers: Vec<Vec<Answer>>,
    pub counters: Counters,
    pub elapsed: Duration,
}

enum Class {
    Final,
    Retry,
    /// Wrong, and retrying may help (a 5xx other than 503).
    UnexpectedRetry,
    /// Wrong, and final (a 4xx no request of this kind should get).
    UnexpectedFinal,
}

fn allowed(kind: &Kind) -> &'static [&'static str] {
    match kind {
        Kind::Issue { .. } => &[
            "200",
            "409 PER_USER_LIMIT_REACHED",
            "409 BATCH_LIMIT_REACHED",
        ],
        Kind::Redeem { .. } => &["200", "409 COUPON_ALREADY_REDEEMED"],
        Kind::CreateBatch => &["201"],
    }
}

fn classify(kind: &Kind, answer: &Answer) -> (Class, String) {
    let label = answer.label();
    let class =
        if answer.status == 503 || (answer.status == 409 && label == "409 REQUEST_IN_PROGRESS") {
            Class::Retry
        } else if allowed(kind).contains(&label.as_str()) {
            Class::Final
        } else if answer.status >= 500 {
            Class::UnexpectedRetry
        } else {
            Class::UnexpectedFinal
        };
    (class, label)
}

/// Sends one copy until it has a final answer, or `deadline`.
async fn deliver(
    client: &Client,
    logical: &Logical,
    variant: usize,
    deadline: Instant,
    counters: &mut Counters,
) -> Option<Answer> {
    let body = &logical.variants[variant % logical.variants.len()];
    let mut last = String::from("nothing");
    let mut pause = Duration::from_millis(10);
    while Instant::now() < deadline {
        counters.attempts += 1;
        match client
            .send(
                Method::POST,
                logical.path,
                Some(&logical.key),
                Some(body.as_slice()),
            )
            .await
        {
            Err(e) => {
                counters.transport_errors += 1;
                last = format!("transport error: {e}");
            }
            Ok(answer) => {
                let (class, label) = classify(&logical.kind, &answer);
                match class {
                    Class::Final => return Some(answer),
                    Class::Retry => {
                        *counters.retried.entry(label.clone()).or_default() += 1;
                        last = label;
                    }
                    Class::UnexpectedRetry => {
                        counters.unexpected.push(|| {
                            format!("{} -> {}: {}", logical.key, label, answer.body_text())
                        });
                        last = label;
                    }
                    Class::UnexpectedFinal => {
                        counters.unexpected.push(|| {
                            format!("{} -> {}: {}", logical.key, label, answer.body_text())
                        });
                        return Some(answer);
                    }
                }
            }
        }
        // A little jitter, so that retries of a crowd do not arrive in lock step.
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..10));
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    counters.stuck.push(|| {
        format!(
            "{}: no final answer within the deadline (last: {last})",
            logical.key
        )
    });
    None
}

/// The order copies are sent in: for every other key all its copies back to back (they
/// run concurrently), for the rest each copy at a random place.
fn schedule(cfg: &StormConfig, n: usize) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut chunks: Vec<Vec<(usize, usize)>> = Vec::new();
    for i in 0..n {
        if i % 2 == 0 {
            chunks.push((0..cfg.copies).map(|c| (i, c)).collect());
        } else {
            chunks.extend((0..cfg.copies).map(|c| vec![(i, c)]));
        }
    }
    chunks.shuffle(&mut rng);
    chunks.into_iter().flatten().collect()
}

/// Runs the storm against `client` (one server, or several round-robin).
pub async fn run(storm: &Arc<Storm>, client: &Client) -> Result<StormRun> {
    let order = Arc::new(schedule(&storm.cfg, storm.logical.len()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline_per_copy = storm.cfg.copy_deadline;
    let mut tasks = Vec::new();
    for _ in 0..storm.cfg.concurrency.max(1) {
        let (storm, client, order, next) =
            (storm.clone(), client.clone(), order.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut counters = Counters::default();
            let mut got: Vec<(usize, Answer)> = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, copy)) = order.get(n) else {
                    break;
                };
                let logical = &storm.logical[i];
                let deadline = Instant::now() + deadline_per_copy;
                if let Some(answer) = deliver(&client, logical, copy, deadline, &mut counters).await
                {
                    got.push((i, answer));
                }
                storm.progress.fetch_add(1, Ordering::Relaxed);
            }
            (counters, got)
        }));
    }
    let mut answers: Vec<Vec<Answer>> = vec![Vec::new(); storm.logical.len()];
    let mut counters = Counters::default();
    for t in tasks {
        let (c, got) = t.await.map_err(|e| anyhow!("storm worker panicked: {e}"))?;
        counters.merge(c);
        for (i, a) in got {
            answers[i].push(a);
        }
    }
    Ok(StormRun {
        answers,
        counters,
        elapsed: started.elapsed(),
    })
}

/// The outcome of [`verify`]: violations by check (each must be 0) and the figures.
#[derive(Debug)]
pub struct Verdict {
    pub checks: Vec<(&'static str, Violations)>,
    pub final_retries: u64,
    pub final_attempts: u64,
}

impl Verdict {
    pub fn violations(&self) -> u64 {
        self.checks.iter().map(|(_, v)| v.count).sum()
    }

    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|(_, v)| v.count > 0)
            .map(|(name, v)| format!("{name}: {} ({})", v.count, v.samples.join(" | ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn to_json(&self) -> Value {
        let checks: serde_json::Map<String, Value> = self
            .checks
            .iter()
            .map(|(name, v)| ((*name).to_owned(), json!(v.count)))
            .collect();
        json!({"violations": self.violations(), "checks": checks})
    }
}

/// A GET that retries transport errors and 503s for up to 60 s.
async fn get_until_answered(client: &Client, path: &str) -> Result<Answer> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.send(Method::GET, path, None, None).await {
            Ok(a) if a.status != 503 => return Ok(a),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(a) => bail!("GET {path} still {} after 60 s", a.status),
            Err(e) => bail!("GET {path} failed for 60 s: {e}"),
        }
    }
}

async fn list_user(client: &Client, user: &str) -> Result<Vec<CouponBody>> {
    let path = format!("{LIST_PATH}?user_id={user}");
    let answer = get_until_answered(client, &path).await?;
    if answer.status != 200 {
        bail!("GET {path}: {} {}", answer.status, answer.body_text());
    }
    Ok(serde_json::from_slice::<ListBody>(&answer.body)
        .with_context(|| format!("GET {path}: {}", answer.body_text()))?
        .items)
}

/// Checks the storm's outcome key by key, by retrying every key once more and against the
/// server's state (through the API, and directly in `db` if given).
pub async fn verify(
    storm: &Arc<Storm>,
    run: &StormRun,
    client: &Client,
    db: Option<&Database>,
) -> Result<Verdict> {
    let cfg = &storm.cfg;
    let tag = &cfg.tag;
    let mut double_execution = Violations::default();
    let mut answers_differ = Violations::default();
    let mut no_answer = Violations::default();
    let mut answer_content = Violations::default();

    // 1. Per key: identical answers, at most one execution.
    for (i, answers) in run.answers.iter().enumerate() {
        let key = &storm.logical[i].key;
        let Some(first) = answers.first() else {
            no_answer.push(|| format!("{key}: no copy got a final answer"));
            continue;
        };
        let executed = answers.iter().filter(|a| !a.replayed).count();
        if executed > 1 {
            double_execution.push(|| format!("{key}: {executed} answers were not replays"));
        }
        for a in &answers[1..] {
            if a.status != first.status || a.body != first.body {
                answers_differ.push(|| {
                    format!(
                        "{key}: {} {} vs {} {}",
                        first.status,
                        first.body_text(),
                        a.status,
                        a.body_text()
                    )
                });
                break;
            }
        }
    }

    // 2. One more retry of every key, now: a replay of the stored answer.
    let mut final_not_replayed = Violations::default();
    let mut final_differs = Violations::default();
    let mut final_counters = Counters::default();
    let finals = final_retries(storm, client).await?;
    let mut final_retries = 0;
    for (i, (answer, counters)) in finals.into_iter().enumerate() {
        final_counters.merge(counters);
        let key = &storm.logical[i].key;
        let Some(answer) = answer else { continue };
        final_retries += 1;
        if !answer.replayed {
            final_not_replayed.push(|| {
                format!(
                    "{key}: the retry after the storm ran again: {}",
                    answer.label()
                )
            });
        }
        if let Some(first) = run.answers[i].first() {
            if answer.status != first.status || answer.body != first.body {
                final_differs.push(|| {
                    format!(
                        "{key}: stored {} {}, replayed {} {}",
                        first.status,
                        first.body_text(),
                        answer.status,
                        answer.body_text()
                    )
                });
            }
        }
    }
    let mut stuck = Violations::default();
    stuck.merge(run.counters.stuck.clone());
    stuck.merge(final_counters.stuck.clone());
    let mut unexpected = Violations::default();
    unexpected.merge(run.counters.unexpected.clone());
    unexpected.merge(final_counters.unexpected.clone());

    // 3. Issues: what each user holds is exactly what the client was answered with.
    let mut codes_by_user: Vec<BTreeSet<String>> = vec![BTreeSet::new(); cfg.users];
    let mut code_owner: HashMap<String, String> = HashMap::new();
    let mut unique_codes = Violations::default();
    let mut refused_full = 0u64;
    for (i, logical) in storm.logical.iter().enumerate() {
        let Kind::Issue { user } = logical.kind else {
            continue;
        };
        let Some(first) = run.answers[i].first() else {
            continue;
        };
        if first.label() == "409 BATCH_LIMIT_REACHED" {
            refused_full += 1;
        }
        if first.status != 200 {
            continue;
        }
        match serde_json::from_slice::<CouponBody>(&first.body) {
            Ok(c) => {
                let name = user_name(tag, user);
                if c.issued_to.as_deref() != Some(name.as_str()) || c.status != "issued" {
                    answer_content.push(|| {
                        format!(
                            "{}: issued to {:?} as {}",
                            logical.key, c.issued_to, c.status
                        )
                    });
                }
                if let Some(other) = code_owner.insert(c.code.clone(), logical.key.clone()) {
                    unique_codes.push(|| {
                        format!("code {} answered to {other} and {}", c.code, logical.key)
                    });
                }
                codes_by_user[user].insert(c.code);
            }
            Err(e) => answer_content.push(|| format!("{}: {e}", logical.key)),
        }
    }
    let mut state_mismatch = Violations::default();
    let mut per_user = Violations::default();
    let mut held_total = 0u64;
    for (u, answered) in codes_by_user.iter().enumerate() {
        let name = user_name(tag, u);
        let held: BTreeSet<String> = list_user(client, &name)
            .await?
            .into_iter()
            .map(|c| c.code)
            .collect();
        held_total += held.len() as u64;
        if held.len() as u64 > cfg.per_user_limit {
            per_user.push(|| format!("{name} holds {} > {}", held.len(), cfg.per_user_limit));
        }
        if &held != answered {
            state_mismatch
                .push(|| format!("{name}: holds {held:?}, the client was answered {answered:?}"));
        }
    }
    let mut batch_limit = Violations::default();
    if held_total > cfg.total_limit {
        batch_limit.push(|| format!("flash batch holds {held_total} > {}", cfg.total_limit));
    }
    if refused_full > 0 && held_total < cfg.total_limit {
        batch_limit.push(|| {
            format!(
                "{refused_full} told BATCH_LIMIT_REACHED, yet the batch holds {held_total} of {}",
                cfg.total_limit
            )
        });
    }

    // 4. Redeems: each contested coupon redeemed once, by the one caller told so.
    let mut redeem_once = Violations::default();
    let mut winners: Vec<Vec<String>> = vec![Vec::new(); storm.pool.len()];
    for (i, logical) in storm.logical.iter().enumerate() {
        let Kind::Redeem {
            coupon,
            ref order_id,
        } = logical.kind
        else {
            continue;
        };
        let Some(first) = run.answers[i].first() else {
            continue;
        };
        if first.status != 200 {
            continue;
        }
        match serde_json::from_slice::<CouponBody>(&first.body) {
            Ok(c) if c.order_id.as_deref() == Some(order_id.as_str()) && c.status == "redeemed" => {
            }
            Ok(c) => answer_content.push(|| {
                format!(
                    "{}: answered order {:?} status {}",
                    logical.key, c.order_id, c.status
                )
            }),
            Err(e) => answer_content.push(|| format!("{}: {e}", logical.key)),
        }
        winners[coupon].push(order_id.clone());
    }
    for (c, coupon) in storm.pool.iter().enumerate() {
        if winners[c].len() != 1 {
            redeem_once.push(|| {
                format!(
                    "coupon {}: {} callers were told they redeemed it ({:?})",
                    coupon.code,
                    winners[c].len(),
                    winners[c]
                )
            });
        }
        let held = list_user(client, &coupon.user).await?;
        let state = held.iter().find(|h| h.code == coupon.code);
        let ok = state.is_some_and(|h| {
            h.status == "redeemed"
                && h.redeemed_by.as_deref() == Some(coupon.user.as_str())
                && winners[c].len() == 1
                && h.order_id.as_deref() == winners[c].first().map(String::as_str)
        });
        if !ok {
            state_mismatch.push(|| {
                format!(
                    "coupon {}: server says status {:?} order {:?}, the winners were {:?}",
                    coupon.code,
                    state.map(|h| h.status.as_str()),
                    state.and_then(|h| h.order_id.as_deref()),
                    winners[c]
                )
            });
        }
    }

    // 5. Batch creations: distinct batches.
    let mut batch_ids = BTreeMap::new();
    for (i, logical) in storm.logical.iter().enumerate() {
        if !matches!(logical.kind, Kind::CreateBatch) {
            continue;
        }
        if let Some(first) = run.answers[i].first().filter(|a| a.status == 201) {
            match batch_id(first) {
                Ok(id) => {
                    if let Some(other) = batch_ids.insert(id, logical.key.clone()) {
                        unique_codes
                            .push(|| format!("batch {id} answered to {other} and {}", logical.key));
                    }
                }
                Err(e) => answer_content.push(|| format!("{}: {e}", logical.key)),
            }
        }
    }

    // 6. Directly in the database: as many rows as effects, as many records as keys.
    let mut db_counts = Violations::default();
    if let Some(db) = db {
        let expect = [
            (
                format!(
                    "SELECT count(*) FROM coupons WHERE batch_id = {}",
                    storm.flash_batch
                ),
                held_total as i64,
                "coupons in the flash batch",
            ),
            (
                format!(
                    "SELECT count(*) FROM coupons WHERE batch_id = {} AND status = 'redeemed'",
                    storm.pool_batch
                ),
                storm.pool.len() as i64,
                "redeemed pool coupons",
            ),
            (
                format!("SELECT count(*) FROM coupon_batches WHERE name LIKE 'storm {tag} %'"),
                (2 + cfg.batch_creates) as i64,
                "batches of this storm",
            ),
            (
                format!("SELECT count(*) FROM idempotency_records WHERE key LIKE 'st-{tag}-%'"),
                (storm.setup_keys + storm.logical.len()) as i64,
                "idempotency records of this storm",
            ),
        ];
        for (sql, want, what) in expect {
            let got = db.scalar(&sql).await.with_context(|| sql.clone())?;
            if got != want {
                db_counts.push(|| format!("{what}: {got} rows, expected {want}"));
            }
        }
    }

    Ok(Verdict {
        checks: vec![
            ("double-execution", double_execution),
            ("answers-differ", answers_differ),
            ("no-final-answer", no_answer),
            ("stuck-keys", stuck),
            ("unexpected-answers", unexpected),
            ("final-retry-not-replayed", final_not_replayed),
            ("final-retry-differs", final_differs),
            ("answer-content", answer_content),
            ("state-matches-answers", state_mismatch),
            ("per-user-limit", per_user),
            ("batch-limit", batch_limit),
            ("unique-codes-and-batches", unique_codes),
            ("redeemed-once", redeem_once),
            ("database-rows", db_counts),
        ],
        final_retries,
        final_attempts: final_counters.attempts,
    })
}

/// Every key once more, `concurrency` at a time.
async fn final_retries(
    storm: &Arc<Storm>,
    client: &Client,
) -> Result<Vec<(Option<Answer>, Counters)>> {
    type Slot = Option<(Option<Answer>, Counters)>;
    let results: Arc<Mutex<Vec<Slot>>> =
        Arc::new(Mutex::new((0..storm.logical.len()).map(|_| None).collect()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..storm.cfg.concurrency.max(1) {
        let (storm, client, next, results) =
            (storm.clone(), client.clone(), next.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(logical) = storm.logical.get(i) else {
                    break;
                };
                let mut counters = Counters::default();
                let deadline = Instant::now() + Duration::from_secs(30);
                let answer = deliver(&client, logical, i, deadline, &mut counters).await;
                if let Ok(mut r) = results.lock() {
                    r[i] = Some((answer, counters));
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| anyhow!("final retry worker panicked: {e}"))?;
    }
    let results = Arc::try_unwrap(results)
        .map_err(|_| anyhow!("final retries still shared"))?
        .into_inner()
        .map_err(|_| anyhow!("final retries poisoned"))?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or((None, Counters::default())))
        .collect())
}

/// The figures of one storm, for the report.
pub fn figures(storm: &Storm, run: &StormRun, verdict: &Verdict) -> Value {
    json!({
        "logical_requests": storm.logical.len(),
        "copies_per_request": storm.cfg.copies,
        "copies_sent": storm.cfg.copies_total(),
        "http_requests": run.counters.attempts + verdict.final_attempts,
        "transport_errors": run.counters.transport_errors,
        "retried_answers": run.counters.retried,
        "final_retries": verdict.final_retries,
        "storm_seconds": (run.elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "seed": storm.cfg.seed,
        "verdict": verdict.to_json(),
    })
}
