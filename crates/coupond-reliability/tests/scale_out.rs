//! Scale-out: three `coupond serve` processes on one PostgreSQL database behind a
//! round-robin client. The bench's flash-sale scenario (with its own invariant checks:
//! limits, unique codes, sold out only when sold out, no 5xx) and the retry storm (whose
//! copies of one key land on different processes, so idempotency has to hold across them)
//! run across all three, and every invariant must hold as on one process.

use std::sync::Arc;
use std::time::Duration;

use coupond_bench::cli::{Bounds, Mix, Scenario};
use coupond_bench::client::Client;
use coupond_bench::invariants;
use coupond_bench::scenarios::{self, RunConfig};
use coupond_reliability::db::{Backend, Database};
use coupond_reliability::profile::Profile;
use coupond_reliability::server::{ServerProc, ServerSpec};
use coupond_reliability::storm::{self, StormConfig};
use coupond_reliability::{admin_key, figures, random_tag};
use serde_json::json;

const PROCESSES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_postgres() {
    let _turn = coupond_reliability::exclusive().await;
    let profile = Profile::current();
    let db = Database::create(Backend::Postgres).await.expect("database");
    let key = admin_key();
    let mut servers = Vec::new();
    for i in 0..PROCESSES {
        servers.push(
            ServerProc::start(ServerSpec::new(&format!("node-{i}"), &db, &key))
                .await
                .expect("starting coupond"),
        );
    }
    let bases: Vec<String> = servers.iter().map(ServerProc::base_url).collect();
    let client = Client::round_robin(&bases, Some(&key), 64, Duration::from_secs(30))
        .expect("round-robin client");

    // 1. The bench's flash sale, across the three.
    let requests = profile.pick(3_000, 30_000);
    let flash = RunConfig {
        scenario: Scenario::FlashSale,
        concurrency: 32,
        bounds: Bounds {
            requests: Some(requests),
            duration: None,
        },
        prefill: 0,
        setup_concurrency: 16,
        flash_limit: None,
        mix: Mix {
            issue: 60,
            redeem: 20,
            replay: 10,
            list: 10,
        },
        tag: random_tag(),
        label: "scale-out flash-sale".into(),
        quiet: true,
    };
    let outcome = scenarios::run(&client, &flash)
        .await
        .expect("flash-sale scenario");
    let failed: Vec<String> = outcome
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();

    // 2. The retry storm, across the three.
    let mut cfg = StormConfig::new(&random_tag());
    if profile == Profile::Long {
        cfg.users = 600;
        cfg.total_limit = 800;
        cfg.pool_coupons = 400;
        cfg.batch_creates = 20;
        cfg.copies = 6;
    } else {
        cfg.copies = 6; // two copies per process
    }
    let storm = Arc::new(storm::setup(&client, cfg).await.expect("storm setup"));
    let run = storm::run(&storm, &client).await.expect("storm");
    let verdict = storm::verify(&storm, &run, &client, Some(&db))
        .await
        .expect("verifying the storm");

    for s in &mut servers {
        assert!(s.is_running(), "{} died:\n{}", s.spec.name, s.log_tail());
    }
    let mut fig = storm::figures(&storm, &run, &verdict);
    fig["test"] = json!("three_processes_on_one_postgres");
    fig["backend"] = json!("postgres");
    fig["profile"] = json!(profile.name());
    fig["processes"] = json!(PROCESSES);
    fig["storm_http_requests"] = fig["http_requests"].clone();
    fig["http_requests"] =
        json!(fig["http_requests"].as_u64().unwrap_or(0) + outcome.summary.requests);
    fig["flash_sale"] = json!({
        "requests": outcome.summary.requests,
        "answers": outcome.summary.answers,
        "throughput_rps": outcome.summary.throughput_rps.round(),
        "checks_failed": failed.len(),
    });
    figures::record("scale-out-postgres", &fig);
    for s in &mut servers {
        s.stop(Duration::from_secs(10)).await.expect("stop");
    }

    assert!(
        invariants::all_ok(&outcome.checks),
        "flash sale across {PROCESSES} processes:\n{}",
        failed.join("\n")
    );
    assert_eq!(
        verdict.violations(),
        0,
        "retry storm across {PROCESSES} processes:\n{}",
        verdict.failures()
    );
}
