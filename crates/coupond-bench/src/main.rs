//! coupond-bench: loads a server speaking the coupond API, checks the invariants the API
//! promises after every run, and reports throughput, latency and (for servers it spawned
//! itself) peak memory.
//!
//! Exit codes: 0 all runs passed every check; 1 an invariant failed (or the server answered a
//! setup request with a 5xx, or crashed); 2 the bench itself could not run (bad arguments, the
//! server could not be started or reached, a report could not be written).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use coupond_bench::cli::{Backend, Cli};
use coupond_bench::client::{is_server_fault, Client};
use coupond_bench::report::{Failure, Report, RunRecord, ServerInfo, Settings, EXIT_BENCH_FAILED};
use coupond_bench::scenarios::RunConfig;
use coupond_bench::spawn::{Server, SpawnConfig};
use coupond_bench::{invariants, scenarios, spawn};

/// How long a spawned server gets between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { EXIT_BENCH_FAILED } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    cli.apply_presets();
    if let Err(e) = cli.validate() {
        eprintln!("coupond-bench: {e:#}");
        return ExitCode::from(EXIT_BENCH_FAILED);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coupond-bench: could not start the async runtime: {e}");
            return ExitCode::from(EXIT_BENCH_FAILED);
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            code = run(&cli) => code,
            signal = stop_signal() => {
                // Dropping `run` drops any spawned server, whose Drop stops it and drops its
                // database.
                eprintln!("coupond-bench: interrupted by {signal}");
                EXIT_BENCH_FAILED
            }
        }
    });
    // Background tickers (progress bars, RSS sampling) must not keep the process waiting.
    runtime.shutdown_timeout(Duration::from_millis(200));
    ExitCode::from(code)
}

/// Resolves with the signal's name on SIGINT (Ctrl-C), SIGTERM or SIGHUP (terminal closed).
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = wait(SignalKind::interrupt()) => "SIGINT",
        () = wait(SignalKind::terminate()) => "SIGTERM",
        () = wait(SignalKind::hangup()) => "SIGHUP",
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

fn status(cli: &Cli, msg: impl AsRef<str>) {
    if !cli.quiet {
        eprintln!("coupond-bench: {}", msg.as_ref());
    }
}

async fn run(cli: &Cli) -> u8 {
    let bounds = cli.bounds();
    let scenarios = cli.scenarios();
    let mut report = Report {
        tool: "coupond-bench",
        version: env!("CARGO_PKG_VERSION"),
        started_at: now_rfc3339(),
        finished_at: String::new(),
        settings: Settings {
            scenarios: scenarios.clone(),
            concurrency: cli.concurrency.clone(),
            requests: bounds.requests,
            duration_s: bounds.duration.map(|d| d.as_secs_f64()),
            prefill: cli.prefill,
            repeat: cli.repeat,
            setup_concurrency: cli.setup_concurrency,
            flash_limit: cli.flash_limit,
            mix: cli.mix,
            api_key_sent: cli.api_key.is_some(),
            request_timeout_s: cli.timeout.as_secs_f64(),
        },
        servers: Vec::new(),
        runs: Vec::new(),
        failures: Vec::new(),
        warnings: Vec::new(),
        ok: false,
        exit_code: 0,
    };

    let run_tag = format!("{:08x}", rand::random::<u32>());
    let mut run_index = 0u32;
    let targets: Vec<Option<Backend>> = if cli.spawn.is_empty() {
        vec![None]
    } else {
        cli.spawn.iter().copied().map(Some).collect()
    };
    let spawn_cfg = match spawn_config(cli) {
        Ok(c) => Some(c),
        Err(e) if !cli.spawn.is_empty() => {
            report.failures.push(Failure {
                target: "spawn".into(),
                scenario: None,
                concurrency: None,
                error: format!("{e:#}"),
                server_fault: false,
            });
            return finish(cli, report);
        }
        Err(_) => None,
    };

    for target in targets {
        let target_name = target.map_or("external", Backend::name).to_string();
        let mut server = match (target, &spawn_cfg) {
            (Some(backend), Some(cfg)) => {
                status(cli, format!("starting coupond ({})", backend.name()));
                match Server::start(backend, cfg).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        report.failures.push(Failure {
                            target: target_name,
                            scenario: None,
                            concurrency: None,
                            error: format!("could not start the server: {e:#}"),
                            server_fault: false,
                        });
                        continue;
                    }
                }
            }
            _ => None,
        };
        let base_url = server.as_ref().map_or_else(
            || cli.base_url.trim_end_matches('/').to_string(),
            |s| s.base_url.clone(),
        );
        let server_idx = report.servers.len();
        report.servers.push(match &server {
            Some(s) => ServerInfo {
                target: target_name.clone(),
                base_url: base_url.clone(),
                spawned: true,
                database: Some(s.database.clone()),
                database_tls: Some(s.tls),
                pid: Some(s.pid()),
                log: Some(s.log_path.display().to_string()),
                stop: None,
            },
            None => ServerInfo {
                target: target_name.clone(),
                base_url: base_url.clone(),
                spawned: false,
                database: None,
                database_tls: None,
                pid: None,
                log: None,
                stop: None,
            },
        });
        if let Some(info) = report.servers.last() {
            status(cli, info.describe());
        }

        let pool = cli
            .concurrency
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(cli.setup_concurrency);
        // A spawned server was started with a known admin key; --api-key wins if given.
        let api_key = cli
            .api_key
            .clone()
            .or_else(|| server.as_ref().map(|s| s.admin_key.clone()));
        let client = match Client::new(&base_url, api_key.as_deref(), pool, cli.timeout) {
            Ok(c) => c,
            Err(e) => {
                report.failures.push(Failure {
                    target: target_name.clone(),
                    scenario: None,
                    concurrency: None,
                    error: format!("{e:#}"),
                    server_fault: false,
                });
                if let Some(s) = server.take() {
                    let _ = s.stop(cli.keep_temp).await;
                }
                continue;
            }
        };

        'runs: for &scenario in &scenarios {
            for &concurrency in &cli.concurrency {
                // One batch (and one prefill) serves every repeat that can share it.
                let mut prepared: Option<scenarios::Prepared> = None;
                for repeat in 1..=cli.repeat {
                    // With --with-empty, a run on a fresh empty batch first, on the same
                    // server at the same moment, so the two differ only in the data.
                    for empty in runs_per_repeat(cli) {
                        run_index += 1;
                        let mut label = if cli.repeat > 1 {
                            format!(
                                "[{target_name} {} c={concurrency} {repeat}/{}",
                                scenario.name(),
                                cli.repeat
                            )
                        } else {
                            format!("[{target_name} {} c={concurrency}", scenario.name())
                        };
                        label.push_str(if empty { " empty]" } else { "]" });
                        if let Some(s) = server.as_mut() {
                            if let Some(exit) = s.exited() {
                                report.failures.push(Failure {
                                    target: target_name.clone(),
                                    scenario: Some(scenario),
                                    concurrency: Some(concurrency),
                                    error: format!(
                                        "coupond is no longer running ({exit}); last lines of {}:\n{}",
                                        s.log_path.display(),
                                        spawn::log_tail(&s.log_path)
                                    ),
                                    server_fault: true,
                                });
                                break 'runs;
                            }
                            s.reset_rss_peak();
                        }
                        let cfg = RunConfig {
                            scenario,
                            concurrency,
                            bounds,
                            prefill: if empty { 0 } else { cli.prefill },
                            setup_concurrency: cli.setup_concurrency,
                            flash_limit: cli.flash_limit,
                            mix: cli.mix,
                            tag: format!("{run_tag}r{run_index}"),
                            label: label.clone(),
                            quiet: cli.quiet,
                        };
                        if !scenarios::batch_is_reusable(scenario) {
                            prepared = None;
                        }
                        let reuse = if empty { None } else { prepared.take() };
                        let outcome = match reuse {
                            Some(p) => Ok(p),
                            None => scenarios::prepare(&client, &cfg).await,
                        };
                        let outcome = match outcome {
                            Ok(mut p) => {
                                let o = scenarios::run_on(&client, &cfg, &mut p).await;
                                if !empty {
                                    prepared = Some(p);
                                }
                                o
                            }
                            Err(e) => Err(e),
                        };
                        let rss = server.as_ref().and_then(Server::rss_peak_kib);
                        let crashed = server.as_mut().and_then(Server::exited);
                        match outcome {
                            Ok(o) => {
                                let ok = invariants::all_ok(&o.checks);
                                let record = RunRecord {
                                    target: target_name.clone(),
                                    base_url: base_url.clone(),
                                    scenario,
                                    concurrency,
                                    repeat,
                                    empty_control: empty,
                                    ok,
                                    summary: o.summary,
                                    checks: o.checks,
                                    server_rss_peak_kib: rss,
                                    prefill: o.prefill,
                                    batches: o.batches,
                                    notes: o.notes,
                                };
                                status(
                                    cli,
                                    format!(
                                        "{label} {} requests, {:.0} req/s, p99 {:.2} ms, {}",
                                        record.summary.requests,
                                        record.summary.throughput_rps,
                                        record.summary.latency_ms.p99,
                                        if ok { "checks ok" } else { "CHECKS FAILED" }
                                    ),
                                );
                                report.runs.push(record);
                            }
                            Err(e) => {
                                let server_fault = is_server_fault(&e) || crashed.is_some();
                                let mut error = format!("{e:#}");
                                if let (Some(exit), Some(s)) = (&crashed, server.as_ref()) {
                                    error.push_str(&format!(
                                    "\ncoupond exited during the run ({exit}); last lines of {}:\n{}",
                                    s.log_path.display(),
                                    spawn::log_tail(&s.log_path)
                                ));
                                }
                                status(cli, format!("{label} failed: {error}"));
                                report.failures.push(Failure {
                                    target: target_name.clone(),
                                    scenario: Some(scenario),
                                    concurrency: Some(concurrency),
                                    error,
                                    server_fault,
                                });
                            }
                        }
                        if crashed.is_some() {
                            break 'runs;
                        }
                    }
                }
            }
        }

        if let Some(s) = server.take() {
            let log = s.log_path.display().to_string();
            // Anything wrong on this server: keep its log and database file for a look.
            let troubled = report.runs.iter().any(|r| r.target == target_name && !r.ok)
                || report.failures.iter().any(|f| f.target == target_name);
            let keep = cli.keep_temp || troubled;
            match s.stop(keep).await {
                Ok(stop) => {
                    if stop.killed {
                        report.warnings.push(format!(
                            "{target_name}: coupond did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed (log kept: {log})"
                        ));
                    } else if !stop.clean {
                        report.warnings.push(format!(
                            "{target_name}: coupond exited with {} after SIGTERM (log kept: {log})",
                            stop.status
                        ));
                    }
                    if let Some(info) = report.servers.get_mut(server_idx) {
                        if !keep && stop.clean {
                            info.log = None;
                        } else {
                            status(cli, format!("{target_name}: server log kept in {log}"));
                        }
                        info.stop = Some(stop);
                    }
                }
                Err(e) => report.failures.push(Failure {
                    target: target_name.clone(),
                    scenario: None,
                    concurrency: None,
                    error: format!("cleaning up: {e:#}"),
                    server_fault: false,
                }),
            }
        }
    }
    finish(cli, report)
}

/// Per repeat: `true` for the empty-batch control run of --with-empty, then `false` for
/// the run on the (prefilled) batch.
fn runs_per_repeat(cli: &Cli) -> Vec<bool> {
    if cli.with_empty && cli.prefill > 0 {
        vec![true, false]
    } else {
        vec![false]
    }
}

fn spawn_config(cli: &Cli) -> Result<SpawnConfig> {
    let bin = match &cli.coupond_bin {
        Some(b) => b.clone(),
        None => spawn::default_coupond_bin().context("locating the coupond binary")?,
    };
    Ok(SpawnConfig {
        bin,
        postgres_admin_url: cli.postgres_url.clone(),
        server_env: cli.server_env.clone(),
        startup_timeout: cli.startup_timeout,
        stop_timeout: STOP_TIMEOUT,
    })
}

/// Prints the report (table or JSON), writes `--report`, and returns the exit code.
fn finish(cli: &Cli, mut report: Report) -> u8 {
    report.finish(now_rfc3339());
    if let Some(dir) = &cli.report {
        if let Err(e) = report.write_dir(dir) {
            report.failures.push(Failure {
                target: "report".into(),
                scenario: None,
                concurrency: None,
                error: format!("{e:#}"),
                server_fault: false,
            });
            report.finish(now_rfc3339());
        } else {
            status(
                cli,
                format!(
                    "wrote {0}/report.md, {0}/results.json and {0}/chart.svg",
                    dir.display()
                ),
            );
        }
    }
    if cli.json {
        match report.to_json() {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("coupond-bench: {e:#}");
                return EXIT_BENCH_FAILED;
            }
        }
    } else {
        print!("{}", report.markdown(false));
    }
    report.exit_code
}
