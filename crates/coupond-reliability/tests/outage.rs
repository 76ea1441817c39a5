//! Database outages under load.
//!
//! * `postgres_outage_during_load` (only with `COUPOND_RELIABILITY_PG_OUTAGE=1`, because
//!   it stops the machine's shared PostgreSQL with `pg_ctlcluster ... stop` and starts it
//!   again): while writers keep going, requests must fail fast with
//!   `503 DATABASE_UNAVAILABLE` + `Retry-After`, nothing may be stored for them (their
//!   retries run fresh afterwards), `/readyz` must say so, and the very same process must
//!   recover once the database is back, every key with exactly one effect.
//! * `sqlite_disk_full`: the file system of the SQLite file fills up (a tmpfs): writes get
//!   a clear `503 DATABASE_UNAVAILABLE`, reads keep working, nothing half-done is stored,
//!   writes work again once there is room, and `PRAGMA integrity_check` is `ok`.
//! * `sqlite_io_failure`: the file system is shut down under the running server (ext4
//!   shutdown: every read and write fails with EIO, as on a disk that died or went
//!   read-only): `503`, no crash; after mounting it again the file is intact and the keys
//!   that got 503 run fresh.
//! * `sqlite_read_only_at_start`: the file is on a read-only mount when coupond starts.
//!
//! The SQLite tests mount file systems and need root (CI and the dev machines are root).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupond_bench::client::{Answer, Client};
use coupond_bench::invariants::Violations;
use coupond_reliability::db::{Backend, Database};
use coupond_reliability::mounts::Mount;
use coupond_reliability::pg_cluster::{self, Cluster, StartOnDrop};
use coupond_reliability::profile::Profile;
use coupond_reliability::server::{ServerProc, ServerSpec};
use coupond_reliability::{admin_key, figures, gaps, random_tag};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A request during an outage must be answered within this (the issue: "fail fast").
const FAIL_FAST: Duration = Duration::from_secs(2);

const ISSUE: &str = "/v1/coupons/issue/";

async fn new_batch(client: &Client, tag: &str, total: u64) -> i64 {
    let body = json!({
        "name": format!("outage {tag}"), "discount_type": "fixed", "amount": 100,
        "per_user_limit": 1, "total_limit": total, "expires_at": "2099-01-01T00:00:00Z",
    });
    let ans = client
        .post_expect(
            "/v1/coupon-batches/",
            &format!("o-{tag}-batch"),
            &serde_json::to_vec(&body).expect("json"),
            StatusCode::CREATED,
        )
        .await
        .expect("creating the batch");
    let v: Value = serde_json::from_slice(&ans.body).expect("batch json");
    v["id"].as_i64().expect("batch id")
}

fn issue_body(batch: i64, tag: &str, n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"batch_id": batch, "user_id": format!("o-{tag}-u{n}")}))
        .expect("json")
}

fn key(tag: &str, n: u64) -> String {
    format!("o-{tag}-k{n}")
}

/// One HTTP attempt of the load.
#[derive(Debug, Clone)]
struct Attempt {
    n: u64,
    sent: Instant,
    latency: Duration,
    /// `None`: transport error.
    answer: Option<Answer>,
}

/// Writers that keep issuing coupons (a new key each, retried until it succeeds) until
/// told to stop, recording every attempt.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Attempt>>>,
    next: Arc<AtomicU64>,
}

impl Load {
    fn start(client: &Client, batch: i64, tag: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (client, stop, next, tag) =
                    (client.clone(), stop.clone(), next.clone(), tag.to_owned());
                tokio::spawn(async move {
                    let mut attempts = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let (key, body) = (key(&tag, n), issue_body(batch, &tag, n));
                        // Retried until it succeeds, even after `stop`: no key is left
                        // half-done. (The test bounds the whole run.)
                        loop {
                            let sent = Instant::now();
                            let answer = client
                                .send(Method::POST, ISSUE, Some(&key), Some(&body))
                                .await
                                .ok();
                            let done = answer.as_ref().is_some_and(|a| a.status == 200);
                            let answered_fast = answer.is_some();
                            attempts.push(Attempt {
                                n,
                                sent,
                                latency: sent.elapsed(),
                                answer,
                            });
                            if done {
                                break;
                            }
                            let pause = if answered_fast { 100 } else { 50 };
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                    }
                    attempts
                })
            })
            .collect();
        Load { stop, tasks, next }
    }

    fn keys_started(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    async fn finish(self, within: Duration) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            match tokio::time::timeout(within, t).await {
                Ok(Ok(a)) => all.extend(a),
                Ok(Err(e)) => panic!("load worker panicked: {e}"),
                Err(_) => panic!("a writer still had no answer {within:?} after the load stopped"),
            }
        }
        all
    }
}

/// One outage: when the stop began and ended, when the start began and the database
/// answered again.
struct Window {
    stop_begin: Instant,
    stop_end: Instant,
    start_begin: Instant,
    start_end: Instant,
}

/// Polls `/readyz` every 100 ms until `until`, returning (when, status, latency).
async fn poll_readyz(client: &Client, until: Instant) -> Vec<(Instant, Option<u16>, Duration)> {
    let mut seen = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        let status = client
            .send(Method::GET, "/readyz", None, None)
            .await
            .ok()
            .map(|a| a.status);
        seen.push((sent, status, sent.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

fn other_postgres_clients(admin: &str) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .arg(admin)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT datname || ' (' || coalesce(application_name, '') || ')' FROM pg_stat_activity \
             WHERE datname IS NOT NULL AND pid <> pg_backend_pid() \
             AND datname NOT LIKE 'coupond_rel_%'",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        _ => vec!["(could not ask pg_stat_activity)".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_during_load() {
    if !pg_cluster::outage_enabled() {
        eprintln!(
            "postgres_outage_during_load: not run; it stops the shared PostgreSQL. Set {}=1 \
             (CI does, in a step of its own).",
            pg_cluster::OUTAGE_ENV
        );
        return;
    }
    let _turn = coupond_reliability::exclusive().await;
    let others = other_postgres_clients(&coupond_reliability::db::postgres_admin_url());
    assert!(
        others.is_empty(),
        "refusing to stop PostgreSQL while other clients use it: {others:?}"
    );
    let profile = Profile::current();
    let outages = profile.pick(1, 3);
    // Longer than the pool's 5 s acquire timeout, so that waiting it out shows as 503s.
    let outage_len = profile.pick(Duration::from_secs(7), Duration::from_secs(10));
    let cluster = Cluster::local().expect("the local cluster");
    // From here on, however the test ends, PostgreSQL is started again.
    let _restart = StartOnDrop(cluster.clone());

    let db = Database::create(Backend::Postgres).await.expect("database");
    let admin = admin_key();
    let mut server = ServerProc::start(ServerSpec::new("outage", &db, &admin))
        .await
        .expect("starting coupond");
    let pid = server.pid();
    let client = Client::new(
        &server.base_url(),
        Some(&admin),
        16,
        Duration::from_secs(30),
    )
    .expect("client");
    let tag = random_tag();
    let batch = new_batch(&client, &tag, 1_000_000).await;

    let load = Load::start(&client, batch, &tag, 8);
    let mut windows: Vec<Window> = Vec::new();
    let mut readyz_down = Vec::new();
    let mut readyz_detect = Vec::new();
    let mut recovery = Vec::new();
    let mut violations: BTreeMap<&str, Violations> = BTreeMap::new();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..outages {
        let stop_begin = Instant::now();
        tokio::task::spawn_blocking({
            let c = cluster.clone();
            move || c.stop()
        })
        .await
        .expect("join")
        .expect("pg_ctlcluster stop");
        let stop_end = Instant::now();
        let seen = poll_readyz(&client, stop_end + outage_len).await;
        // /readyz: unavailable from the moment the database is gone, answered quickly.
        let first_down = seen
            .iter()
            .find(|(_, s, _)| *s == Some(503))
            .map(|(t, _, _)| t.duration_since(stop_begin));
        readyz_detect.push(first_down.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0));
        for (t, status, latency) in &seen {
            if *status != Some(503) && t.duration_since(stop_end) > Duration::from_secs(3) {
                violations
                    .entry("readyz-during-outage")
                    .or_default()
                    .push(|| format!("outage {i}: /readyz answered {status:?}"));
            }
            if *latency > Duration::from_secs(3) {
                violations
                    .entry("readyz-slow")
                    .or_default()
                    .push(|| format!("outage {i}: /readyz took {latency:?}"));
            }
        }
        readyz_down.push(seen.iter().filter(|(_, s, _)| *s == Some(503)).count());
        let start_begin = Instant::now();
        tokio::task::spawn_blocking({
            let c = cluster.clone();
            move || c.start()
        })
        .await
        .expect("join")
        .expect("pg_ctlcluster start");
        assert!(
            Cluster::wait_ready(Duration::from_secs(30)),
            "PostgreSQL did not come back"
        );
        let start_end = Instant::now();
        windows.push(Window {
            stop_begin,
            stop_end,
            start_begin,
            start_end,
        });
        // The same process recovers by itself: ready again, without a restart.
        let mut ready_after = None;
        while start_end.elapsed() < Duration::from_secs(30) {
            let status = client
                .send(Method::GET, "/readyz", None, None)
                .await
                .ok()
                .map(|a| a.status);
            if status == Some(200) {
                ready_after = Some(start_end.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        recovery.push(ready_after.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0));
        if ready_after.is_none() {
            violations
                .entry("no-recovery")
                .or_default()
                .push(|| format!("outage {i}: /readyz not 200 within 30 s of PostgreSQL's return"));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let keys = load.keys_started();
    let attempts = load.finish(Duration::from_secs(60)).await;
    assert!(
        server.is_running() && server.pid() == pid,
        "coupond was not supposed to restart"
    );

    // Every attempt in flight at some point between the stop and the database's return.
    let mut outage_answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_failure_latency = Duration::ZERO;
    let mut first_ok: BTreeMap<u64, &Attempt> = BTreeMap::new();
    let mut refused_while_down: BTreeMap<u64, ()> = BTreeMap::new();
    let mut judged = 0u64;
    for a in &attempts {
        if a.answer.as_ref().is_some_and(|ans| ans.status == 200) {
            first_ok.entry(a.n).or_insert(a);
        }
        let ended = a.sent + a.latency;
        let Some(w) = windows
            .iter()
            .find(|w| a.sent < w.start_end && ended > w.stop_begin)
        else {
            continue;
        };
        judged += 1;
        let label = a
            .answer
            .as_ref()
            .map_or_else(|| "transport error".to_owned(), Answer::label);
        *outage_answers.entry(label.clone()).or_default() += 1;
        let who = key(&tag, a.n);
        match label.as_str() {
            "200" => {}
            "503 DATABASE_UNAVAILABLE" => {
                if a.answer
                    .as_ref()
                    .is_some_and(|ans| ans.retry_after.is_none())
                {
                    violations
                        .entry("retry-after-missing")
                        .or_default()
                        .push(|| format!("{who}: 503 without Retry-After"));
                }
                if a.sent >= w.stop_end && a.sent < w.start_begin {
                    refused_while_down.insert(a.n, ());
                }
            }
            "500 INTERNAL" => violations
                .entry("outage-500")
                .or_default()
                .push(|| format!("{who}: 500 INTERNAL when PostgreSQL shut down")),
            _ => violations
                .entry("wrong-answer-during-outage")
                .or_default()
                .push(|| format!("{who}: {label} while the database was down")),
        }
        // Fail fast: from the moment the database was gone (or the request came, if
        // later), an answer within FAIL_FAST; waiting for the database's return is not.
        if a.sent < w.start_begin {
            let from = a.sent.max(w.stop_end);
            let took = ended.saturating_duration_since(from);
            if label != "200" {
                max_failure_latency = max_failure_latency.max(a.latency);
            }
            if took > FAIL_FAST {
                violations.entry("slow-failure").or_default().push(|| {
                    format!(
                        "{who}: {label} {:.1} s after the database was gone (must be under {FAIL_FAST:?})",
                        took.as_secs_f64()
                    )
                });
            }
        }
    }
    if refused_while_down.is_empty() {
        // Writes sent while the database was down waited for it to come back instead of
        // being refused: the same want of failing fast.
        violations.entry("slow-failure").or_default().push(|| {
            format!(
                "no write sent while the database was down was answered 503 before it came \
                 back: {outage_answers:?}"
            )
        });
    }
    // Refused while the database was down: nothing stored, so the retry ran fresh.
    for n in refused_while_down.keys() {
        let fresh = first_ok
            .get(n)
            .and_then(|a| a.answer.as_ref())
            .is_some_and(|ans| !ans.replayed);
        let first_attempt_down = attempts.iter().find(|a| a.n == *n).is_some_and(|a| {
            windows
                .iter()
                .any(|w| a.sent >= w.stop_end && a.sent < w.start_begin)
        });
        if first_attempt_down && !fresh {
            violations
                .entry("stored-despite-503")
                .or_default()
                .push(|| format!("{}: its first success was a replay", key(&tag, *n)));
        }
    }
    // Exactly one effect per key: a replay for every key now, and the rows in the database.
    for n in 0..keys {
        let Some(first) = first_ok.get(&n).and_then(|a| a.answer.as_ref()) else {
            violations
                .entry("never-succeeded")
                .or_default()
                .push(|| format!("{} never got a 200", key(&tag, n)));
            continue;
        };
        let again = client
            .send(
                Method::POST,
                ISSUE,
                Some(&key(&tag, n)),
                Some(&issue_body(batch, &tag, n)),
            )
            .await
            .expect("final retry");
        if !again.replayed || again.body != first.body || again.status != 200 {
            violations.entry("final-retry").or_default().push(|| {
                format!(
                    "{}: {} replayed={}",
                    key(&tag, n),
                    again.label(),
                    again.replayed
                )
            });
        }
    }
    let coupons = db
        .scalar(&format!(
            "SELECT count(*) FROM coupons WHERE batch_id = {batch}"
        ))
        .await
        .expect("count");
    let records = db
        .scalar(&format!(
            "SELECT count(*) FROM idempotency_records WHERE key LIKE 'o-{tag}-k%'"
        ))
        .await
        .expect("count");
    if coupons != keys as i64 || records != keys as i64 {
        violations
            .entry("database-rows")
            .or_default()
            .push(|| format!("{keys} keys, {coupons} coupons, {records} idempotency records"));
    }
    server.stop(Duration::from_secs(10)).await.expect("stop");

    let (total, gap_violations) = gaps::count(&violations);
    figures::record(
        "pg-outage",
        &json!({
            "test": "postgres_outage_during_load",
            "backend": "postgres",
            "profile": profile.name(),
            "outages": outages,
            "outage_seconds_each": outage_len.as_secs_f64(),
            "keys": keys,
            "http_requests": attempts.len() as u64 + keys,
            "attempts_in_outage_windows": judged,
            "answers_in_outage_windows": outage_answers,
            "max_failure_latency_s": (max_failure_latency.as_secs_f64() * 100.0).round() / 100.0,
            "readyz_503_seen": readyz_down,
            "readyz_first_503_after_s": readyz_detect,
            "ready_again_after_s": recovery,
            "violations": total,
            "known_gap_violations": gap_violations,
            "checks": violations.iter().map(|(k, v)| (k.to_string(), json!(v.count))).collect::<serde_json::Map<_, _>>(),
        }),
    );
    gaps::assert_clean(
        "postgres_outage_during_load",
        &violations,
        &["slow-failure"],
    );
}

// ---------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------

/// Sends one issue request; `None` for a transport error.
async fn issue(client: &Client, batch: i64, tag: &str, n: u64) -> (Option<Answer>, Duration) {
    let sent = Instant::now();
    let answer = client
        .send(
            Method::POST,
            ISSUE,
            Some(&key(tag, n)),
            Some(&issue_body(batch, tag, n)),
        )
        .await
        .ok();
    (answer, sent.elapsed())
}

struct SqliteFault {
    db: Database,
    mount: Mount,
    server: ServerProc,
    client: Client,
    tag: String,
    batch: i64,
}

async fn sqlite_on(mount: impl FnOnce(&Database) -> Mount) -> SqliteFault {
    let db = Database::create(Backend::Sqlite).await.expect("database");
    let mount = mount(&db);
    let admin = admin_key();
    let mut spec = ServerSpec::new("sqlite-fault", &db, &admin);
    spec.database_url = format!("sqlite://{}", mount.dir.join("coupond.db").display());
    let server = ServerProc::start(spec).await.expect("starting coupond");
    let client =
        Client::new(&server.base_url(), Some(&admin), 8, Duration::from_secs(30)).expect("client");
    let tag = random_tag();
    let batch = new_batch(&client, &tag, 1_000_000).await;
    SqliteFault {
        db,
        mount,
        server,
        client,
        tag,
        batch,
    }
}

fn tally(v: &mut BTreeMap<String, u64>, answer: &Option<Answer>) {
    let label = answer
        .as_ref()
        .map_or_else(|| "transport error".to_owned(), Answer::label);
    *v.entry(label).or_default() += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full() {
    let _turn = coupond_reliability::exclusive().await;
    let mut f = sqlite_on(|db| Mount::tmpfs(&db.dir.join("mnt"), 24).expect("tmpfs")).await;
    let mut violations: BTreeMap<&str, Violations> = BTreeMap::new();
    // Room at first.
    for n in 0..20 {
        let (a, _) = issue(&f.client, f.batch, &f.tag, n).await;
        assert_eq!(a.map(|a| a.status), Some(200), "before the disk filled up");
    }
    let filler = f.mount.fill("filler").expect("filling the disk");
    // Full: every write that cannot be stored is a clear 503, quickly; reads still work.
    let mut answers = BTreeMap::new();
    let mut refused = Vec::new();
    let mut ok_while_full = Vec::new();
    let mut n = 20;
    while n < 400 && refused.len() < 30 {
        let (a, latency) = issue(&f.client, f.batch, &f.tag, n).await;
        tally(&mut answers, &a);
        match a.as_ref().map(Answer::label).as_deref() {
            Some("200") if refused.is_empty() => ok_while_full.push(n),
            Some("503 DATABASE_UNAVAILABLE") => refused.push(n),
            other => violations
                .entry("wrong-answer-when-full")
                .or_default()
                .push(|| {
                    format!(
                        "key {n}: {other:?} (body {:?})",
                        a.as_ref().map(Answer::body_text)
                    )
                }),
        }
        if latency > FAIL_FAST {
            violations
                .entry("slow-failure")
                .or_default()
                .push(|| format!("key {n}: answered after {latency:?}"));
        }
        n += 1;
    }
    assert!(
        !refused.is_empty(),
        "the disk is full ({filler} bytes of filler) yet no write was refused: {answers:?}"
    );
    let list = f
        .client
        .send(Method::GET, "/v1/coupons/?user_id=o-x", None, None)
        .await
        .expect("list");
    if list.status != 200 {
        violations
            .entry("reads-while-full")
            .or_default()
            .push(|| format!("GET /v1/coupons/ answered {}", list.label()));
    }
    let readyz_full = f
        .client
        .send(Method::GET, "/readyz", None, None)
        .await
        .map(|a| a.status)
        .ok();
    // Room again: the same process takes writes again, and the refused keys run fresh.
    std::fs::remove_file(f.mount.dir.join("filler")).expect("removing the filler");
    let mut recovered = 0;
    for &k in &refused {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (a, _) = issue(&f.client, f.batch, &f.tag, k).await;
            match a {
                Some(a) if a.status == 200 => {
                    if a.replayed {
                        violations
                            .entry("stored-despite-503")
                            .or_default()
                            .push(|| format!("key {k}: replayed after its 503"));
                    }
                    recovered += 1;
                    break;
                }
                other if Instant::now() >= deadline => {
                    violations.entry("no-recovery").or_default().push(|| {
                        format!(
                            "key {k}: still {:?} 20 s after room was made",
                            other.map(|a| a.label())
                        )
                    });
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let keys = n;
    let status = f.server.stop(Duration::from_secs(15)).await;
    let integrity = coupond_reliability::db::integrity_check(&f.mount.dir.join("coupond.db"))
        .expect("integrity check");
    if integrity != "ok" {
        violations
            .entry("integrity")
            .or_default()
            .push(|| format!("PRAGMA integrity_check: {integrity}"));
    }
    let coupons = rusqlite_count(
        &f,
        &format!("SELECT count(*) FROM coupons WHERE batch_id = {}", f.batch),
    );
    let expected = 20 + ok_while_full.len() as i64 + recovered;
    if coupons != expected {
        violations
            .entry("database-rows")
            .or_default()
            .push(|| format!("{coupons} coupons, expected {expected} (the 200s)"));
    }
    let total: u64 = violations.values().map(|v| v.count).sum();
    figures::record(
        "sqlite-disk-full",
        &json!({
            "test": "sqlite_disk_full", "backend": "sqlite",
            "writes_while_full": keys - 20, "answers_while_full": answers,
            "refused_then_recovered": recovered, "readyz_while_full": readyz_full,
            "stopped": status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            "integrity_check": integrity, "violations": total,
        }),
    );
    drop(f.db);
    assert_eq!(
        total,
        0,
        "{}",
        violations
            .iter()
            .map(|(k, v)| format!("{k}: {} ({})", v.count, v.samples.join(" | ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn rusqlite_count(f: &SqliteFault, sql: &str) -> i64 {
    let conn = coupond_reliability::db::open_sqlite_read_only(&f.mount.dir.join("coupond.db"))
        .expect("open");
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_io_failure() {
    let _turn = coupond_reliability::exclusive().await;
    let mut f = sqlite_on(|db| {
        Mount::ext4(&db.dir.join("disk.img"), &db.dir.join("mnt"), 64).expect("ext4 image")
    })
    .await;
    let mut violations: BTreeMap<&str, Violations> = BTreeMap::new();
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let (a, _) = issue(&f.client, f.batch, &f.tag, n).await;
        assert_eq!(
            a.as_ref().map(|a| a.status),
            Some(200),
            "before the failure"
        );
        acknowledged.push((n, a.map(|a| a.body).unwrap_or_default()));
    }
    // What was acknowledged so far is made durable first: with synchronous=NORMAL a dying
    // disk may take commits not yet checkpointed (documented, see docs/RELIABILITY.md).
    coupond_reliability::db::sqlite_make_durable(&f.mount.dir.join("coupond.db"))
        .expect("checkpoint");
    f.mount.shut_down().expect("shutting the file system down");
    let mut answers = BTreeMap::new();
    let mut refused = Vec::new();
    for n in 20..60 {
        let (a, latency) = issue(&f.client, f.batch, &f.tag, n).await;
        tally(&mut answers, &a);
        match a.as_ref().map(Answer::label).as_deref() {
            Some("503 DATABASE_UNAVAILABLE") => refused.push(n),
            other => violations
                .entry("wrong-answer-on-eio")
                .or_default()
                .push(|| {
                    format!(
                        "key {n}: {other:?} (body {:?})",
                        a.as_ref().map(Answer::body_text)
                    )
                }),
        }
        if latency > FAIL_FAST {
            violations
                .entry("slow-failure")
                .or_default()
                .push(|| format!("key {n}: answered after {latency:?}"));
        }
    }
    let alive = f.server.is_running();
    if !alive {
        violations
            .entry("crashed")
            .or_default()
            .push(|| format!("coupond exited on EIO:\n{}", f.server.log_tail()));
    }
    let readyz = f
        .client
        .send(Method::GET, "/readyz", None, None)
        .await
        .map(|a| a.status)
        .ok();
    // The disk comes back (mounted again): nothing lost, nothing corrupt, the refused
    // keys run fresh and the acknowledged ones replay.
    let _ = f.server.stop(Duration::from_secs(10)).await;
    if f.server.is_running() {
        let _ = f.server.kill9().await;
    }
    f.mount
        .remount(false)
        .expect("mounting the file system again");
    let integrity =
        coupond_reliability::db::integrity_check(&f.mount.dir.join("coupond.db")).expect("check");
    if integrity != "ok" {
        violations
            .entry("integrity")
            .or_default()
            .push(|| format!("PRAGMA integrity_check: {integrity}"));
    }
    f.server
        .restart()
        .await
        .expect("restarting on the repaired disk");
    for (n, body) in &acknowledged {
        let (a, _) = issue(&f.client, f.batch, &f.tag, *n).await;
        if !a.as_ref().is_some_and(|a| a.replayed && &a.body == body) {
            violations
                .entry("acknowledged-lost")
                .or_default()
                .push(|| format!("key {n}: {:?} after the failure", a.map(|a| a.label())));
        }
    }
    for &n in &refused {
        let (a, _) = issue(&f.client, f.batch, &f.tag, n).await;
        if !a.as_ref().is_some_and(|a| a.status == 200 && !a.replayed) {
            violations
                .entry("stored-despite-503")
                .or_default()
                .push(|| {
                    format!(
                        "key {n}: {:?} replayed={:?}",
                        a.as_ref().map(Answer::label),
                        a.as_ref().map(|a| a.replayed)
                    )
                });
        }
    }
    let _ = f.server.stop(Duration::from_secs(10)).await;
    let coupons = rusqlite_count(
        &f,
        &format!("SELECT count(*) FROM coupons WHERE batch_id = {}", f.batch),
    );
    let expected = (acknowledged.len() + refused.len()) as i64;
    if coupons != expected {
        violations
            .entry("database-rows")
            .or_default()
            .push(|| format!("{coupons} coupons, expected {expected}"));
    }
    let total: u64 = violations.values().map(|v| v.count).sum();
    figures::record(
        "sqlite-io-failure",
        &json!({
            "test": "sqlite_io_failure", "backend": "sqlite",
            "writes_after_failure": 40, "answers_after_failure": answers,
            "alive_after_failure": alive, "readyz_after_failure": readyz,
            "integrity_check": integrity, "violations": total,
        }),
    );
    assert_eq!(
        total,
        0,
        "{}",
        violations
            .iter()
            .map(|(k, v)| format!("{k}: {} ({})", v.count, v.samples.join(" | ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A database on a read-only mount when coupond starts: it must not hang or crash. It
/// either refuses to start, quickly and saying why, or it serves reads and answers writes
/// with a clear 503; either way the file is left intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_only_at_start() {
    let _turn = coupond_reliability::exclusive().await;
    let mut f = sqlite_on(|db| {
        Mount::ext4(&db.dir.join("disk.img"), &db.dir.join("mnt"), 32).expect("ext4 image")
    })
    .await;
    for n in 0..5 {
        let (a, _) = issue(&f.client, f.batch, &f.tag, n).await;
        assert_eq!(a.map(|a| a.status), Some(200));
    }
    f.server.stop(Duration::from_secs(10)).await.expect("stop");
    f.mount.remount(true).expect("mounting read-only");
    let started = Instant::now();
    let restart = f.server.restart().await;
    let outcome = match restart {
        Err(e) => {
            let log = f.server.log_tail().to_ascii_lowercase();
            let clear =
                log.contains("read-only") || log.contains("readonly") || log.contains("read only");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "coupond took {:?} to give up",
                started.elapsed()
            );
            assert!(
                clear,
                "coupond refused to start on a read-only file without saying so: {e:#}"
            );
            "refused to start, saying the database is read-only".to_owned()
        }
        Ok(()) => {
            let (a, latency) = issue(&f.client, f.batch, &f.tag, 100).await;
            let label = a.as_ref().map(Answer::label);
            assert_eq!(
                label.as_deref(),
                Some("503 DATABASE_UNAVAILABLE"),
                "a write on a read-only database"
            );
            assert!(latency < FAIL_FAST, "the refusal took {latency:?}");
            let list = f
                .client
                .send(Method::GET, "/v1/coupons/?user_id=x", None, None)
                .await
                .expect("list");
            assert_eq!(list.status, 200, "reads on a read-only database");
            let _ = f.server.stop(Duration::from_secs(10)).await;
            "served reads, refused writes with 503".to_owned()
        }
    };
    f.mount.remount(false).expect("mounting read-write");
    let integrity =
        coupond_reliability::db::integrity_check(&f.mount.dir.join("coupond.db")).expect("check");
    figures::record(
        "sqlite-read-only",
        &json!({"test": "sqlite_read_only_at_start", "backend": "sqlite",
                "outcome": outcome, "integrity_check": integrity}),
    );
    assert_eq!(integrity, "ok");
}
