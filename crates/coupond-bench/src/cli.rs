use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

/// Used when neither `--requests` nor `--duration` is given, so a run is never unbounded.
pub const DEFAULT_REQUESTS: u64 = 20_000;
/// `--smoke`: every scenario, this many requests at this concurrency.
pub const SMOKE_REQUESTS: u64 = 300;
pub const SMOKE_CONCURRENCY: usize = 8;
/// The maintenance database used to create throwaway databases for `--spawn postgres`.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Load generator and invariant checker for servers speaking the coupond API.
///
/// Every run ends with invariant checks (batch and per-user limits, single
/// redemption, byte-identical replays, no 5xx); the exit code is 1 when any
/// check fails and 2 when the bench itself could not run.
#[derive(Debug, Parser)]
#[command(name = "coupond-bench", version)]
pub struct Cli {
    /// Workload(s) to run: issue, flash-sale, redeem, replay, list, mixed, ping, or `all`; a
    /// comma-separated list runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "issue", value_parser = parse_scenario)]
    pub scenario: Vec<ScenarioChoice>,

    /// CI preset: every scenario, 300 requests each at concurrency 8, no progress bars.
    #[arg(long, conflicts_with_all = ["scenario", "requests", "duration", "concurrency"])]
    pub smoke: bool,

    /// Server to load when not spawning one.
    #[arg(
        long,
        env = "COUPOND_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub base_url: String,

    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "COUPOND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Concurrent in-flight requests; a comma-separated list sweeps (e.g. 1,8,64).
    #[arg(long, value_delimiter = ',', default_value = "8", value_parser = parse_concurrency)]
    pub concurrency: Vec<usize>,

    /// Measured requests per run (default 20000 when --duration is not given either).
    #[arg(long)]
    pub requests: Option<u64>,

    /// Measured time per run, e.g. 10s, 500ms, 2m; combined with --requests whichever ends first.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Start every run from a batch that already holds this many coupons (issued over HTTP
    /// before the measured phase, not measured).
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,

    /// Measured runs of each scenario at each concurrency. Runs that can share a batch do:
    /// it is created and prefilled once and each repeat adds to it, so a --prefill of a
    /// million coupons is paid once (flash-sale sells its batch out, so each of its repeats
    /// prepares its own).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// With --prefill: before each run on the prefilled batch, the same run on a fresh
    /// empty batch of the same server, so that "empty" and "prefilled" are measured side
    /// by side under the same conditions (the shared machine drifts by more than the
    /// difference being measured).
    #[arg(long)]
    pub with_empty: bool,

    /// Requests in flight during unmeasured setup: --prefill and the coupon pools of the
    /// redeem, replay, list and mixed scenarios.
    #[arg(long, default_value_t = 64, value_parser = parse_concurrency)]
    pub setup_concurrency: usize,

    /// flash-sale: the batch's total_limit (default: a tenth of the request count).
    #[arg(long)]
    pub flash_limit: Option<u64>,

    /// mixed: weights of the operations, e.g. issue=60,redeem=20,replay=10,list=10.
    #[arg(long, default_value = "issue=60,redeem=20,replay=10,list=10", value_parser = parse_mix)]
    pub mix: Mix,

    /// Start a fresh `coupond serve` per backend instead of using --base-url (e.g. sqlite,postgres).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub spawn: Vec<Backend>,

    /// Server binary for --spawn (default: `coupond` next to this executable).
    #[arg(long)]
    pub coupond_bin: Option<PathBuf>,

    /// Maintenance connection used to create and drop the throwaway database for --spawn
    /// postgres. The spawned server connects to its database with `sslmode=disable`.
    #[arg(
        long,
        env = "COUPOND_TEST_POSTGRES_URL",
        default_value = DEFAULT_POSTGRES_URL,
        hide_env_values = true
    )]
    pub postgres_url: String,

    /// Extra environment for the spawned server, KEY=VAL (repeatable). The spawned server logs
    /// at COUPOND_LOG=warn unless this sets COUPOND_LOG.
    #[arg(long, value_parser = parse_key_val)]
    pub server_env: Vec<(String, String)>,

    /// How long a spawned server may take to answer its first request.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub startup_timeout: Duration,

    /// Keep the spawned server's temp dir (database file, log) even when all checks pass.
    #[arg(long)]
    pub keep_temp: bool,

    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,

    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Write report.md, results.json and chart.svg into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One batch, every request a distinct user.
    Issue,
    /// A batch with a small total_limit and ten times as many users racing for it.
    FlashSale,
    /// Issue N coupons (unmeasured), then measure redeeming each once.
    Redeem,
    /// Issue N coupons with keys (unmeasured), then measure re-sending the same requests.
    Replay,
    /// Listing coupons per user and status.
    List,
    /// A blend of issue, redeem, replay and list (see --mix).
    Mixed,
    /// `GET /healthz`: no database, no JSON, no key; what this machine can serve over
    /// HTTP at all, the ceiling the other scenarios are measured against.
    Ping,
}

/// One `--scenario` value: a scenario, or `all` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioChoice {
    All,
    One(Scenario),
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Issue,
        Scenario::FlashSale,
        Scenario::Redeem,
        Scenario::Replay,
        Scenario::List,
        Scenario::Mixed,
        Scenario::Ping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Issue => "issue",
            Scenario::FlashSale => "flash-sale",
            Scenario::Redeem => "redeem",
            Scenario::Replay => "replay",
            Scenario::List => "list",
            Scenario::Mixed => "mixed",
            Scenario::Ping => "ping",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Relative weights of the operations in the `mixed` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mix {
    pub issue: u32,
    pub redeem: u32,
    pub replay: u32,
    pub list: u32,
}

impl Mix {
    pub fn total(&self) -> u32 {
        self.issue + self.redeem + self.replay + self.list
    }
}

/// The measured bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
}

impl Cli {
    /// Applies `--smoke`; call once after parsing.
    pub fn apply_presets(&mut self) {
        if self.smoke {
            self.scenario = vec![ScenarioChoice::All];
            self.requests = Some(SMOKE_REQUESTS);
            self.duration = None;
            self.concurrency = vec![SMOKE_CONCURRENCY];
            self.quiet = true;
        }
    }

    /// The scenarios to run, in order, each once.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut out = Vec::new();
        for choice in &self.scenario {
            let add: &[Scenario] = match choice {
                ScenarioChoice::All => &Scenario::ALL,
                ScenarioChoice::One(s) => std::slice::from_ref(s),
            };
            for s in add {
                if !out.contains(s) {
                    out.push(*s);
                }
            }
        }
        out
    }

    pub fn bounds(&self) -> Bounds {
        let requests = match (self.requests, self.duration) {
            (None, None) => Some(DEFAULT_REQUESTS),
            (r, _) => r,
        };
        Bounds {
            requests,
            duration: self.duration,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if self.duration == Some(Duration::ZERO) {
            bail!("--duration must be positive");
        }
        if self.concurrency.is_empty() {
            bail!("--concurrency needs at least one value");
        }
        if self.flash_limit == Some(0) {
            bail!("--flash-limit must be at least 1");
        }
        if self.scenario.is_empty() {
            bail!("--scenario needs at least one value");
        }
        if self.scenarios().contains(&Scenario::Mixed) && self.mix.total() == 0 {
            bail!("--mix needs at least one non-zero weight");
        }
        let mut seen = Vec::new();
        for b in &self.spawn {
            if seen.contains(b) {
                bail!("--spawn lists {} twice", b.name());
            }
            seen.push(*b);
        }
        if self.spawn.is_empty() {
            if self.base_url.starts_with("https://") {
                bail!(
                    "--base-url: https is not supported (this build has no TLS client); \
                     coupond-bench loads servers on this machine over plain http"
                );
            }
            if !self.base_url.starts_with("http://") {
                bail!("--base-url must start with http://");
            }
        }
        for (k, _) in &self.server_env {
            if k.contains('\0') {
                bail!("--server-env: variable names cannot contain NUL");
            }
        }
        Ok(())
    }
}

fn parse_scenario(s: &str) -> Result<ScenarioChoice> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(ScenarioChoice::All);
    }
    match <Scenario as ValueEnum>::from_str(s, true) {
        Ok(sc) => Ok(ScenarioChoice::One(sc)),
        Err(_) => {
            bail!("unknown scenario {s:?} (issue, flash-sale, redeem, replay, list, mixed, ping or all)")
        }
    }
}

fn parse_concurrency(s: &str) -> Result<usize> {
    let n: usize = s
        .trim()
        .parse()
        .with_context(|| format!("not a number: {s:?}"))?;
    if n == 0 {
        bail!("concurrency must be at least 1");
    }
    if n > 100_000 {
        bail!("concurrency {n} is more than this tool will open connections for (100000)");
    }
    Ok(n)
}

/// Accepts `250ms`, `10s`, `1.5s`, `2m`, `1h`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        bail!("duration {s:?} has no number");
    }
    let value: f64 = num
        .parse()
        .with_context(|| format!("bad number in duration {s:?}"))?;
    let secs_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "us" | "µs" => 0.000_001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => bail!("unknown duration unit {other:?} in {s:?} (use ms, s, m or h)"),
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        bail!("duration {s:?} out of range");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_key_val(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("expected KEY=VAL, got {s:?}"))?;
    if k.is_empty() {
        bail!("empty variable name in {s:?}");
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn parse_mix(s: &str) -> Result<Mix> {
    let mut mix = Mix {
        issue: 0,
        redeem: 0,
        replay: 0,
        list: 0,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("expected op=weight, got {part:?}"))?;
        let w: u32 = v
            .trim()
            .parse()
            .with_context(|| format!("bad weight in {part:?}"))?;
        if w > 1_000_000 {
            bail!("weight {w} too large");
        }
        match k.trim() {
            "issue" => mix.issue = w,
            "redeem" => mix.redeem = w,
            "replay" => mix.replay = w,
            "list" => mix.list = w,
            other => bail!("unknown operation {other:?} (issue, redeem, replay, list)"),
        }
    }
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 3 s ").ok(), Some(Duration::from_secs(3)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999h").is_err());
    }

    #[test]
    fn mix_parsing() {
        let m = parse_mix("issue=60,redeem=20,replay=10,list=10").ok();
        assert_eq!(
            m,
            Some(Mix {
                issue: 60,
                redeem: 20,
                replay: 10,
                list: 10
            })
        );
        assert_eq!(parse_mix("list=1").map(|m| m.total()).ok(), Some(1));
        assert!(parse_mix("issue").is_err());
        assert!(parse_mix("bogus=1").is_err());
        assert!(parse_mix("issue=x").is_err());
    }

    #[test]
    fn key_val() {
        assert_eq!(
            parse_key_val("A=b=c").ok(),
            Some(("A".to_string(), "b=c".to_string()))
        );
        assert!(parse_key_val("A").is_err());
        assert!(parse_key_val("=x").is_err());
    }

    #[test]
    fn cli_parses_lists_and_bounds() {
        let cli = Cli::try_parse_from([
            "coupond-bench",
            "--concurrency",
            "1,8,64",
            "--spawn",
            "sqlite,postgres",
            "--duration",
            "5s",
            "--server-env",
            "RUST_LOG=warn",
        ]);
        let cli = match cli {
            Ok(c) => c,
            Err(e) => panic!("parse failed: {e}"),
        };
        assert_eq!(cli.concurrency, vec![1, 8, 64]);
        assert_eq!(cli.spawn, vec![Backend::Sqlite, Backend::Postgres]);
        let b = cli.bounds();
        assert_eq!(b.requests, None);
        assert_eq!(b.duration, Some(Duration::from_secs(5)));
        assert!(cli.validate().is_ok());

        let cli = Cli::try_parse_from(["coupond-bench"]);
        let cli = match cli {
            Ok(c) => c,
            Err(e) => panic!("parse failed: {e}"),
        };
        assert_eq!(cli.bounds().requests, Some(DEFAULT_REQUESTS));
        assert!(Cli::try_parse_from(["coupond-bench", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["coupond-bench", "--concurrency", "1,,8"]).is_err());
        assert!(Cli::try_parse_from(["coupond-bench", "--spawn", "mysql"]).is_err());
    }

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec!["coupond-bench"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(mut c) => {
                c.apply_presets();
                c
            }
            Err(e) => panic!("parse failed for {args:?}: {e}"),
        }
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]);
        assert_eq!(cli.scenarios(), vec![Scenario::Issue]);
        assert_eq!(cli.concurrency, vec![8]);
        assert_eq!(cli.prefill, 0);
        assert_eq!(cli.setup_concurrency, 64);
        assert!(cli.spawn.is_empty());
        if std::env::var_os("COUPOND_TEST_POSTGRES_URL").is_none() {
            assert_eq!(cli.postgres_url, DEFAULT_POSTGRES_URL);
        }
    }

    #[test]
    fn scenario_lists_and_all() {
        let cli = parse(&["--scenario", "flash-sale,replay,flash-sale"]);
        assert_eq!(cli.scenarios(), vec![Scenario::FlashSale, Scenario::Replay]);
        let cli = parse(&["--scenario", "all"]);
        assert_eq!(cli.scenarios(), Scenario::ALL.to_vec());
        let cli = parse(&["--scenario", "Mixed"]);
        assert_eq!(cli.scenarios(), vec![Scenario::Mixed]);
        assert!(Cli::try_parse_from(["coupond-bench", "--scenario", "bogus"]).is_err());
        for s in Scenario::ALL {
            assert_eq!(parse(&["--scenario", s.name()]).scenarios(), vec![s]);
        }
    }

    #[test]
    fn smoke_preset() {
        let cli = parse(&["--smoke", "--spawn", "sqlite"]);
        assert_eq!(cli.scenarios(), Scenario::ALL.to_vec());
        assert_eq!(cli.bounds().requests, Some(SMOKE_REQUESTS));
        assert_eq!(cli.concurrency, vec![SMOKE_CONCURRENCY]);
        assert!(cli.quiet);
        assert!(cli.validate().is_ok());
        for clash in [
            &["--smoke", "--requests", "5"][..],
            &["--smoke", "--concurrency", "1"],
            &["--smoke", "--scenario", "issue"],
            &["--smoke", "--duration", "1s"],
        ] {
            let mut args = vec!["coupond-bench"];
            args.extend_from_slice(clash);
            assert!(Cli::try_parse_from(args).is_err(), "{clash:?}");
        }
    }

    #[test]
    fn everything_else_parses() {
        let cli = parse(&[
            "--scenario",
            "mixed",
            "--base-url",
            "http://127.0.0.1:9/",
            "--api-key",
            "sekrit",
            "--requests",
            "1000",
            "--duration",
            "2m",
            "--prefill",
            "1000000",
            "--setup-concurrency",
            "128",
            "--flash-limit",
            "7",
            "--mix",
            "issue=1,list=3",
            "--coupond-bin",
            "/opt/coupond",
            "--postgres-url",
            "postgres://me@db/admin",
            "--server-env",
            "A=1",
            "--server-env",
            "B=2",
            "--json",
            "--report",
            "out",
            "--keep-temp",
            "-q",
        ]);
        assert_eq!(cli.api_key.as_deref(), Some("sekrit"));
        let b = cli.bounds();
        assert_eq!(b.requests, Some(1000));
        assert_eq!(b.duration, Some(Duration::from_secs(120)));
        assert_eq!(cli.prefill, 1_000_000);
        assert_eq!(cli.setup_concurrency, 128);
        assert_eq!(cli.flash_limit, Some(7));
        assert_eq!(cli.mix.total(), 4);
        assert_eq!(cli.coupond_bin, Some(PathBuf::from("/opt/coupond")));
        assert_eq!(cli.postgres_url, "postgres://me@db/admin");
        assert_eq!(cli.server_env.len(), 2);
        assert!(cli.json && cli.keep_temp && cli.quiet);
        assert_eq!(cli.report, Some(PathBuf::from("out")));
        assert!(cli.validate().is_ok());
    }

    #[test]
    fn validation() {
        assert!(parse(&["--requests", "0"]).validate().is_err());
        assert!(parse(&["--duration", "0s"]).validate().is_err());
        assert!(parse(&["--flash-limit", "0"]).validate().is_err());
        assert!(parse(&["--spawn", "sqlite,sqlite"]).validate().is_err());
        assert!(parse(&["--scenario", "mixed", "--mix", "issue=0"])
            .validate()
            .is_err());
        // A zero mix only matters when mixed runs.
        assert!(parse(&["--mix", "issue=0"]).validate().is_ok());
        assert!(parse(&["--base-url", "https://x"]).validate().is_err());
        assert!(parse(&["--base-url", "ftp://x"]).validate().is_err());
        // With --spawn the base URL is not used.
        assert!(parse(&["--base-url", "https://x", "--spawn", "postgres"])
            .validate()
            .is_ok());
    }
}
