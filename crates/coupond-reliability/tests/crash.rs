//! Crash under load: a retry storm while the server is killed with SIGKILL at random
//! moments and started again on the same database and port. Afterwards every key has
//! exactly one effect and replays its stored answer; no batch is over its limit, no coupon
//! is redeemed twice, no key is stuck (see `coupond_reliability::storm`). On SQLite the
//! file passes `PRAGMA integrity_check` after all those kills.
//!
//! `cargo test -p coupond-reliability --test crash` (CI profile: 10 kills per backend,
//! ~6,000 copies); `COUPOND_RELIABILITY_PROFILE=long` for the soak (30 kills, ~38,000).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupond_bench::client::Client;
use coupond_reliability::db::{Backend, Database};
use coupond_reliability::profile::Profile;
use coupond_reliability::server::{ServerProc, ServerSpec};
use coupond_reliability::storm::{self, StormConfig};
use coupond_reliability::{admin_key, backend_tests, figures, random_tag};
use rand::Rng;
use serde_json::json;

async fn crash_under_load(backend: Backend) {
    let _turn = coupond_reliability::exclusive().await;
    let profile = Profile::current();
    let db = Database::create(backend).await.expect("database");
    let key = admin_key();
    let mut server = ServerProc::start(ServerSpec::new("crash", &db, &key))
        .await
        .expect("starting coupond");
    let client =
        Client::new(&server.base_url(), Some(&key), 64, Duration::from_secs(15)).expect("client");

    let mut cfg = StormConfig::new(&random_tag());
    let kills = profile.pick(10, 30);
    if profile == Profile::Ci {
        cfg.users = 300;
        cfg.total_limit = 400;
        cfg.pool_coupons = 200;
        cfg.batch_creates = 10;
    } else {
        cfg.users = 1500;
        cfg.total_limit = 2000;
        cfg.pool_coupons = 1000;
        cfg.batch_creates = 50;
        cfg.copies = 5;
    }
    let storm = Arc::new(
        storm::setup(&client, cfg.clone())
            .await
            .expect("setting up the storm"),
    );
    let total = cfg.copies_total() as u64;

    // Kill points at random places of the run's progress, at least a few percent apart,
    // each a random few milliseconds after the point is reached.
    let mut rng = rand::thread_rng();
    let mut points: Vec<u64> = (0..kills)
        .map(|_| (rng.gen_range(0.03..0.85) * total as f64) as u64)
        .collect();
    points.sort_unstable();
    let min_gap = total / (kills as u64 * 3);

    let started = Instant::now();
    let storm_task = {
        let (storm, client) = (storm.clone(), client.clone());
        tokio::spawn(async move { storm::run(&storm, &client).await })
    };
    let mut downtime = Duration::ZERO;
    let mut floor = 0;
    for point in points {
        let point = point.max(floor);
        while storm.progress.load(Ordering::Relaxed) < point && !storm_task.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if storm_task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
        let down = Instant::now();
        server.kill9().await.expect("SIGKILL");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..100))).await;
        server.restart().await.expect("restarting after SIGKILL");
        downtime += down.elapsed();
        floor = storm.progress.load(Ordering::Relaxed) + min_gap;
    }
    let run = storm_task
        .await
        .expect("storm task")
        .expect("running the storm");
    let storm_seconds = started.elapsed().as_secs_f64();
    assert!(
        server.kills >= 5,
        "only {} kills happened during the storm (wanted {kills}); the storm was too short",
        server.kills
    );

    let verdict = storm::verify(&storm, &run, &client, Some(&db))
        .await
        .expect("verifying");
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("stopping coupond");
    let integrity = match backend {
        Backend::Sqlite => db.sqlite_integrity_check().expect("integrity check"),
        Backend::Postgres => "n/a".to_owned(),
    };
    let mut fig = storm::figures(&storm, &run, &verdict);
    fig["test"] = json!("crash_under_load");
    fig["backend"] = json!(backend.name());
    fig["profile"] = json!(profile.name());
    fig["kills"] = json!(server.kills);
    fig["restarts"] = json!(server.starts - 1);
    fig["downtime_seconds"] = json!((downtime.as_secs_f64() * 10.0).round() / 10.0);
    fig["total_seconds"] = json!((storm_seconds * 10.0).round() / 10.0);
    fig["sqlite_integrity_check"] = json!(integrity);
    figures::record(&format!("crash-{}", backend.name()), &fig);

    assert_eq!(
        verdict.violations(),
        0,
        "invariant violations after {} kills:\n{}\nserver log {}:\n{}",
        server.kills,
        verdict.failures(),
        server.log_path.display(),
        server.log_tail()
    );
    if backend == Backend::Sqlite {
        assert_eq!(integrity, "ok", "PRAGMA integrity_check after the kills");
    }
}

backend_tests!(crash_under_load);

/// The checks above can fail: the same storm against a server that forgets every key at
/// once (a 1 ms idempotency TTL, no replay cache) must be caught running keys twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_catches_a_server_that_forgets_keys() {
    let _turn = coupond_reliability::exclusive().await;
    let db = Database::create(Backend::Sqlite).await.expect("database");
    let key = admin_key();
    let spec = ServerSpec::new("forgetful", &db, &key)
        .env("COUPOND_IDEMPOTENCY_TTL", "1ms")
        .env("COUPOND_IDEMPOTENCY_CACHE_MIB", "0");
    let mut server = ServerProc::start(spec).await.expect("starting coupond");
    let client =
        Client::new(&server.base_url(), Some(&key), 64, Duration::from_secs(15)).expect("client");
    let mut cfg = StormConfig::new(&random_tag());
    cfg.users = 30;
    cfg.total_limit = 40;
    cfg.pool_coupons = 20;
    let storm = Arc::new(storm::setup(&client, cfg).await.expect("setup"));
    let run = storm::run(&storm, &client).await.expect("storm");
    let verdict = storm::verify(&storm, &run, &client, Some(&db))
        .await
        .expect("verifying");
    server.stop(Duration::from_secs(10)).await.expect("stop");
    let caught = |name: &str| {
        verdict
            .checks
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v.count)
    };
    assert!(
        caught("double-execution") > 0 && caught("final-retry-not-replayed") > 0,
        "a server without idempotency passed the storm's checks: {verdict:?}"
    );
    assert!(
        caught("database-rows") > 0 || caught("state-matches-answers") > 0,
        "extra effects went unnoticed: {verdict:?}"
    );
}
