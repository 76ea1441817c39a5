//! What a bench invocation found, and its three renderings: the table (terminal and
//! report.md), one JSON document (`--json`, results.json) and chart.svg.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{Mix, Scenario};
use crate::invariants::{BatchLimits, Check};
use crate::scenarios::PrefillReport;
use crate::spawn::StopReport;
use crate::stats::Summary;

/// The settings every run of an invocation shared.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub scenarios: Vec<Scenario>,
    pub concurrency: Vec<usize>,
    pub requests: Option<u64>,
    pub duration_s: Option<f64>,
    pub prefill: u64,
    /// Measured runs per scenario and concurrency.
    pub repeat: u32,
    pub setup_concurrency: usize,
    pub flash_limit: Option<u64>,
    pub mix: Mix,
    pub api_key_sent: bool,
    pub request_timeout_s: f64,
}

/// A server the bench started (or, for `external`, the one it was pointed at).
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// `sqlite`, `postgres`, or `external`.
    pub target: String,
    pub base_url: String,
    pub spawned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Whether the spawned server talks TLS to its database (never: `sslmode=disable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopReport>,
}

impl ServerInfo {
    pub fn describe(&self) -> String {
        if !self.spawned {
            return format!("{}: {} (not spawned)", self.target, self.base_url);
        }
        let mut s = format!("{}: spawned on {}", self.target, self.base_url);
        if let Some(pid) = self.pid {
            let _ = write!(s, ", pid {pid}");
        }
        if let Some(db) = &self.database {
            let _ = write!(s, ", database {db}");
        }
        if self.database_tls == Some(false) && self.target == "postgres" {
            s.push_str(", TLS to PostgreSQL off (sslmode=disable)");
        }
        if let (Some(log), Some(_)) = (&self.log, &self.stop) {
            let _ = write!(s, ", log kept at {log}");
        }
        if let Some(stop) = &self.stop {
            let _ = write!(
                s,
                "; stopped in {} ms, {}{}",
                stop.stop_ms,
                stop.status,
                if stop.killed { " (needed SIGKILL)" } else { "" }
            );
        }
        s
    }
}

/// One measured run: a target, a scenario and a concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub target: String,
    pub base_url: String,
    pub scenario: Scenario,
    pub concurrency: usize,
    /// Which of `--repeat` measured runs of this scenario and concurrency (from 1).
    pub repeat: u32,
    /// A `--with-empty` control: the same run on a fresh empty batch.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub empty_control: bool,
    pub summary: Summary,
    pub ok: bool,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_peak_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill: Option<PrefillReport>,
    pub batches: Vec<BatchLimits>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunRecord {
    /// `numbered`: the invocation repeated runs, so say which one this is.
    pub fn name(&self, numbered: bool) -> String {
        let mut name = format!(
            "{} {} c={}",
            self.target,
            self.scenario.name(),
            self.concurrency
        );
        if self.empty_control {
            name.push_str(" empty batch");
        }
        if numbered {
            let _ = write!(name, " run {}", self.repeat);
        }
        name
    }
}

/// The middle value (the mean of the two middle ones for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Something that kept a run (or a whole target) from happening.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    pub error: String,
    /// The server's fault (a 5xx during setup, a crash), not the bench's.
    pub server_fault: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_at: String,
    pub finished_at: String,
    pub settings: Settings,
    pub servers: Vec<ServerInfo>,
    pub runs: Vec<RunRecord>,
    pub failures: Vec<Failure>,
    /// Things the server did wrong that no invariant covers (e.g. ignoring SIGTERM).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub ok: bool,
    pub exit_code: u8,
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_CHECK_FAILED: u8 = 1;
pub const EXIT_BENCH_FAILED: u8 = 2;

impl Report {
    /// 1 when an invariant failed or the server broke (a 5xx or crash during setup), else 2
    /// when some run could not happen, else 0.
    pub fn compute_exit_code(&self) -> u8 {
        let check_failed = self.runs.iter().any(|r| !r.ok);
        let server_fault = self.failures.iter().any(|f| f.server_fault);
        if check_failed || server_fault {
            EXIT_CHECK_FAILED
        } else if !self.failures.is_empty() || self.runs.is_empty() {
            EXIT_BENCH_FAILED
        } else {
            EXIT_OK
        }
    }

    pub fn finish(&mut self, finished_at: String) {
        self.finished_at = finished_at;
        self.exit_code = self.compute_exit_code();
        self.ok = self.exit_code == EXIT_OK;
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).context("encoding the JSON report")
    }

    /// Writes report.md, results.json and chart.svg into `dir` (created if missing).
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: String| -> Result<()> {
            let path = dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("report.md", self.markdown(true))?;
        write("results.json", self.to_json()? + "\n")?;
        write("chart.svg", chart_svg(&self.chart_title(), &self.series()))?;
        Ok(())
    }

    fn chart_title(&self) -> String {
        let names: Vec<&str> = self.settings.scenarios.iter().map(|s| s.name()).collect();
        format!("coupond-bench: {}", names.join(", "))
    }

    /// One line per (target, scenario), points in concurrency order; repeated runs at one
    /// concurrency make one point, their median throughput and median p99.
    pub fn series(&self) -> Vec<Series> {
        let many_scenarios = {
            let mut s: Vec<Scenario> = self.runs.iter().map(|r| r.scenario).collect();
            s.dedup();
            s.len() > 1
        };
        let mut out: Vec<Series> = Vec::new();
        for r in &self.runs {
            let name = if many_scenarios {
                format!("{} · {}", r.target, r.scenario.name())
            } else {
                r.target.clone()
            };
            let point = Point {
                concurrency: r.concurrency,
                throughput_rps: r.summary.throughput_rps,
                p99_ms: r.summary.latency_ms.p99,
            };
            match out.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(point),
                None => out.push(Series {
                    name,
                    points: vec![point],
                }),
            }
        }
        for s in &mut out {
            s.points.sort_by_key(|p| p.concurrency);
            let mut merged: Vec<Point> = Vec::new();
            for group in s.points.chunk_by(|a, b| a.concurrency == b.concurrency) {
                merged.push(Point {
                    concurrency: group[0].concurrency,
                    throughput_rps: median(group.iter().map(|p| p.throughput_rps).collect()),
                    p99_ms: median(group.iter().map(|p| p.p99_ms).collect()),
                });
            }
            s.points = merged;
        }
        out
    }

    /// With `--repeat`: per target, scenario and concurrency, the median run's figures and
    /// every run's throughput.
    fn medians_table(&self) -> String {
        let with_controls = self.runs.iter().any(|r| r.empty_control);
        type Group<'a> = (&'a str, Scenario, usize, bool, Vec<&'a RunRecord>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        for r in &self.runs {
            match groups.iter_mut().find(|g| {
                g.0 == r.target
                    && g.1 == r.scenario
                    && g.2 == r.concurrency
                    && g.3 == r.empty_control
            }) {
                Some(g) => g.4.push(r),
                None => groups.push((
                    &r.target,
                    r.scenario,
                    r.concurrency,
                    r.empty_control,
                    vec![r],
                )),
            }
        }
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|(target, scenario, conc, empty, runs)| {
                let rps: Vec<String> = runs
                    .iter()
                    .map(|r| format!("{:.0}", r.summary.throughput_rps))
                    .collect();
                let mut row = vec![
                    (*target).to_string(),
                    scenario.name().to_string(),
                    conc.to_string(),
                    runs.len().to_string(),
                    format!(
                        "{:.0}",
                        median(runs.iter().map(|r| r.summary.throughput_rps).collect())
                    ),
                    fmt_ms(median(
                        runs.iter().map(|r| r.summary.latency_ms.p99).collect(),
                    )),
                    rps.join(", "),
                ];
                if with_controls {
                    let batch = if *empty {
                        "empty".to_string()
                    } else {
                        format!("{} prefilled", self.settings.prefill)
                    };
                    row.insert(3, batch);
                }
                row
            })
            .collect();
        let mut header = vec![
            "backend",
            "scenario",
            "conc",
            "runs",
            "median req/s",
            "median p99 ms",
            "req/s of each run",
        ];
        let mut right = vec![2, 3, 4, 5];
        if with_controls {
            // The empty-batch controls of --with-empty get rows of their own.
            header.insert(3, "batch");
            right = vec![2, 4, 5, 6];
        }
        table(&header, &right, &rows)
    }

    /// The human report: the table, answers, failed checks, notes and errors. With `heading`
    /// it starts with a title, for report.md.
    pub fn markdown(&self, heading: bool) -> String {
        let mut out = String::new();
        if heading {
            let _ = writeln!(out, "# coupond-bench report\n");
            let _ = writeln!(
                out,
                "coupond-bench {}, {} to {}. Figures from a shared machine are rough.\n",
                self.version, self.started_at, self.finished_at
            );
            let s = &self.settings;
            let bound = match (s.requests, s.duration_s) {
                (Some(r), Some(d)) => format!("{r} requests or {d} s, whichever ends first"),
                (Some(r), None) => format!("{r} requests"),
                (None, Some(d)) => format!("{d} s"),
                (None, None) => "unbounded".into(),
            };
            let _ = writeln!(
                out,
                "Per run: {bound}; prefill {} coupons; setup concurrency {}.\n",
                s.prefill, s.setup_concurrency
            );
        }
        if heading {
            out.push_str("## Results\n\n");
        }
        if !self.servers.is_empty() {
            out.push_str("Servers:\n");
            for s in &self.servers {
                let _ = writeln!(out, "- {}", s.describe());
            }
            out.push('\n');
        }

        let numbered = self.settings.repeat > 1 || self.runs.iter().any(|r| r.empty_control);
        let mut header = vec![
            "backend",
            "scenario",
            "conc",
            "requests",
            "2xx",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "server RSS",
            "checks",
        ];
        let mut rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let s = &r.summary;
                let failed: Vec<&str> = r.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
                vec![
                    r.target.clone(),
                    r.scenario.name().to_string(),
                    r.concurrency.to_string(),
                    s.requests.to_string(),
                    s.successes.to_string(),
                    format!("{:.0}", s.throughput_rps),
                    fmt_ms(s.latency_ms.p50),
                    fmt_ms(s.latency_ms.p90),
                    fmt_ms(s.latency_ms.p99),
                    fmt_ms(s.latency_ms.max),
                    r.server_rss_peak_kib.map_or("-".into(), fmt_kib),
                    if failed.is_empty() {
                        format!("{} ok", r.checks.len())
                    } else {
                        format!("FAILED: {}", failed.join(", "))
                    },
                ]
            })
            .collect();
        let mut right: Vec<usize> = (2..=10).collect();
        if numbered {
            header.insert(3, "run");
            for (row, r) in rows.iter_mut().zip(&self.runs) {
                let run = if r.empty_control {
                    format!("{} (empty batch)", r.repeat)
                } else {
                    r.repeat.to_string()
                };
                row.insert(3, run);
            }
            right.push(11);
        }
        if rows.is_empty() {
            out.push_str("No run completed.\n");
        } else {
            out.push_str(&table(&header, &right, &rows));
            if numbered {
                out.push_str("\nMedians over the repeated runs:\n");
                out.push_str(&self.medians_table());
            }
        }

        if !self.runs.is_empty() {
            out.push_str("\nAnswers by status and error code:\n");
            for r in &self.runs {
                let parts: Vec<String> = r
                    .summary
                    .answers
                    .iter()
                    .map(|(label, n)| format!("{label} ×{n}"))
                    .chain(
                        (r.summary.transport_errors > 0)
                            .then(|| format!("no answer ×{}", r.summary.transport_errors)),
                    )
                    .collect();
                let _ = writeln!(out, "- {}: {}", r.name(numbered), parts.join(", "));
            }
        }

        let failed: Vec<(&RunRecord, &Check)> = self
            .runs
            .iter()
            .flat_map(|r| r.checks.iter().filter(|c| !c.ok).map(move |c| (r, c)))
            .collect();
        if failed.is_empty() {
            if !self.runs.is_empty() {
                let mut names: Vec<&str> = Vec::new();
                for c in self.runs.iter().flat_map(|r| &r.checks) {
                    if !names.contains(&c.name) {
                        names.push(c.name);
                    }
                }
                let _ = writeln!(
                    out,
                    "\nInvariants: all passed in every run ({}).",
                    names.join(", ")
                );
            }
        } else {
            out.push_str("\nFailed invariants:\n");
            for (r, c) in failed {
                let _ = writeln!(out, "- {} {}: {}", r.name(numbered), c.name, c.detail);
            }
        }

        let notes: Vec<String> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.notes
                    .iter()
                    .map(move |n| format!("{}: {n}", r.name(numbered)))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        if !self.warnings.is_empty() {
            out.push_str("\nWarnings:\n");
            for w in &self.warnings {
                let _ = writeln!(out, "- {w}");
            }
        }
        if !self.failures.is_empty() {
            out.push_str("\nErrors:\n");
            for f in &self.failures {
                let mut what = f.target.clone();
                if let Some(s) = f.scenario {
                    let _ = write!(what, " {}", s.name());
                }
                if let Some(c) = f.concurrency {
                    let _ = write!(what, " c={c}");
                }
                let kind = if f.server_fault {
                    "server fault"
                } else {
                    "bench error"
                };
                let _ = writeln!(out, "- {what} ({kind}): {}", f.error.replace('\n', "\n  "));
            }
        }
        let verdict = match self.exit_code {
            EXIT_OK => "OK".to_string(),
            EXIT_CHECK_FAILED => "FAILED: an invariant did not hold (exit 1)".to_string(),
            n => format!("FAILED: the bench could not run everything (exit {n})"),
        };
        let _ = writeln!(out, "\nResult: {verdict}");
        out
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A Markdown table padded so it also reads as plain text; `right` lists the columns that
/// are numbers.
pub fn table(header: &[&str], right: &[usize], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    // At least three wide, so the separator row is valid Markdown and still lines up.
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count().max(3)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let cell = |i: usize, text: &str| {
        let pad = width[i].saturating_sub(text.chars().count());
        if right.contains(&i) {
            format!("{}{}", " ".repeat(pad), text)
        } else {
            format!("{}{}", text, " ".repeat(pad))
        }
    };
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(header.iter().enumerate().map(|(i, h)| cell(i, h)).collect());
    out.push_str(&line(
        (0..cols)
            .map(|i| {
                let dashes = "-".repeat(width[i] - 1);
                if right.contains(&i) {
                    format!("{dashes}:")
                } else {
                    format!("{dashes}-")
                }
            })
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(
            (0..cols)
                .map(|i| cell(i, row.get(i).map_or("", String::as_str)))
                .collect(),
        ));
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub concurrency: usize,
    pub throughput_rps: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const DASHES: [&str; 3] = ["", "6 3", "2 3"];

const WIDTH: f64 = 1000.0;
const PANEL_W: f64 = 500.0;
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 20.0;
const PLOT_TOP: f64 = 70.0;
const PLOT_BOTTOM: f64 = 370.0;
const LEGEND_TOP: f64 = 430.0;
const LEGEND_ROW: f64 = 22.0;

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let exp = x.log10().floor();
    let base = 10f64.powf(exp);
    let f = x / base;
    let nf = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nf * base
}

/// Ticks from 0 to a nice value at or above `max`, about five of them.
pub fn y_ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let step = nice_step(max / 5.0);
    let n = (max / step).ceil().max(1.0) as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        let v = v.round() as i64;
        if v.abs() >= 10_000 && v % 1000 == 0 {
            format!("{}k", v / 1000)
        } else {
            v.to_string()
        }
    } else {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

struct XAxis {
    ticks: Vec<usize>,
    log: bool,
    min: f64,
    max: f64,
}

impl XAxis {
    fn new(series: &[Series]) -> XAxis {
        let mut ticks: Vec<usize> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.concurrency))
            .collect();
        ticks.sort_unstable();
        ticks.dedup();
        let min = ticks.first().copied().unwrap_or(1).max(1) as f64;
        let max = ticks.last().copied().unwrap_or(1).max(1) as f64;
        XAxis {
            log: max / min >= 4.0,
            ticks,
            min,
            max,
        }
    }

    /// 0..=1 across the plot.
    fn pos(&self, c: usize) -> f64 {
        let c = (c.max(1)) as f64;
        if self.max <= self.min {
            return 0.5;
        }
        let t = if self.log {
            (c.log2() - self.min.log2()) / (self.max.log2() - self.min.log2())
        } else {
            (c - self.min) / (self.max - self.min)
        };
        0.05 + 0.9 * t
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() && v >= 0.0 {
        v
    } else {
        0.0
    }
}

/// Hand-written SVG: throughput (left) and p99 latency (right) against concurrency, one line
/// per series, a shared legend underneath.
pub fn chart_svg(title: &str, series: &[Series]) -> String {
    let legend_rows = series.len().max(1) as f64;
    let height = LEGEND_TOP + legend_rows * LEGEND_ROW + 20.0;
    let x_axis = XAxis::new(series);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="{}" y="28" text-anchor="middle" font-size="18" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        xml_escape(title)
    );

    type Metric = fn(&Point) -> f64;
    let panels: [(&str, &str, Metric); 2] = [
        ("Throughput", "requests per second", |p| {
            finite(p.throughput_rps)
        }),
        ("p99 latency", "p99 latency (ms)", |p| finite(p.p99_ms)),
    ];
    for (i, (panel_title, y_label, metric)) in panels.iter().enumerate() {
        let ox = i as f64 * PANEL_W;
        let left = ox + PLOT_LEFT;
        let right = ox + PANEL_W - PLOT_RIGHT;
        let plot_w = right - left;
        let plot_h = PLOT_BOTTOM - PLOT_TOP;
        let max = series
            .iter()
            .flat_map(|s| s.points.iter().map(metric))
            .fold(0.0f64, f64::max);
        let ticks = y_ticks(max);
        let top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
        let step = if ticks.len() > 1 {
            ticks[1] - ticks[0]
        } else {
            1.0
        };
        let y = |v: f64| PLOT_BOTTOM - (v / top) * plot_h;
        let x = |c: usize| left + x_axis.pos(c) * plot_w;

        let _ = writeln!(
            svg,
            r#"<g class="panel">
<text x="{}" y="55" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            (left + right) / 2.0,
            xml_escape(panel_title)
        );
        for t in &ticks {
            let ty = y(*t);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{ty:.1}" x2="{right}" y2="{ty:.1}" stroke="#e0e0e0"/>
<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left - 6.0,
                ty + 4.0,
                xml_escape(&fmt_tick(*t, step))
            );
        }
        for c in &x_axis.ticks {
            let tx = x(*c);
            let _ = writeln!(
                svg,
                r##"<line x1="{tx:.1}" y1="{PLOT_BOTTOM}" x2="{tx:.1}" y2="{:.1}" stroke="#333"/>
<text x="{tx:.1}" y="{:.1}" text-anchor="middle">{c}</text>"##,
                PLOT_BOTTOM + 5.0,
                PLOT_BOTTOM + 19.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{PLOT_TOP}" x2="{left}" y2="{PLOT_BOTTOM}" stroke="#333"/>
<line x1="{left}" y1="{PLOT_BOTTOM}" x2="{right}" y2="{PLOT_BOTTOM}" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"##,
            (left + right) / 2.0,
            PLOT_BOTTOM + 40.0,
            if x_axis.log {
                "concurrency (requests in flight, log scale)"
            } else {
                "concurrency (requests in flight)"
            },
            ox + 22.0,
            (PLOT_TOP + PLOT_BOTTOM) / 2.0,
            ox + 22.0,
            (PLOT_TOP + PLOT_BOTTOM) / 2.0,
            xml_escape(y_label)
        );
        for (si, s) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let dash = DASHES[(si / COLORS.len()) % DASHES.len()];
            let points: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.concurrency), y(metric(p))))
                .collect();
            let dash_attr = if dash.is_empty() {
                String::new()
            } else {
                format!(r#" stroke-dasharray="{dash}""#)
            };
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash_attr} points="{}"/>"#,
                points.join(" ")
            );
            for p in &s.points {
                let v = metric(p);
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{}: {} at concurrency {}</title></circle>"#,
                    x(p.concurrency),
                    y(v),
                    xml_escape(&s.name),
                    xml_escape(&fmt_tick(v, if v >= 100.0 { 1.0 } else { 0.01 })),
                    p.concurrency
                );
            }
        }
        svg.push_str("</g>\n");
    }

    svg.push_str("<g class=\"legend\">\n");
    if series.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no completed runs</text>"#,
            WIDTH / 2.0,
            LEGEND_TOP + 4.0
        );
    }
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let dash = DASHES[(si / COLORS.len()) % DASHES.len()];
        let ly = LEGEND_TOP + si as f64 * LEGEND_ROW;
        let lx = PLOT_LEFT;
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"{dash_attr}/>
<circle cx="{}" cy="{ly}" r="4" fill="{color}"/>
<text x="{}" y="{}">{}</text>"#,
            lx + 36.0,
            lx + 18.0,
            lx + 46.0,
            ly + 4.0,
            xml_escape(&s.name)
        );
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use std::time::Duration;

    fn series(name: &str, pts: &[(usize, f64, f64)]) -> Series {
        Series {
            name: name.into(),
            points: pts
                .iter()
                .map(|&(c, t, p)| Point {
                    concurrency: c,
                    throughput_rps: t,
                    p99_ms: p,
                })
                .collect(),
        }
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        match roxmltree::Document::parse(svg) {
            Ok(d) => d,
            Err(e) => panic!("not well-formed XML: {e}\n{svg}"),
        }
    }

    fn count(doc: &roxmltree::Document<'_>, tag: &str) -> usize {
        doc.descendants().filter(|n| n.has_tag_name(tag)).count()
    }

    fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::to_owned))
            .collect()
    }

    #[test]
    fn chart_is_well_formed_with_a_line_per_series_and_panel() {
        let s = vec![
            series(
                "sqlite",
                &[(1, 900.0, 1.2), (8, 4100.0, 3.5), (64, 5200.0, 28.0)],
            ),
            series(
                "postgres",
                &[(1, 700.0, 1.6), (8, 3000.0, 4.1), (64, 3900.0, 40.0)],
            ),
        ];
        let svg = chart_svg("coupond-bench: issue", &s);
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        // Two panels × two series.
        assert_eq!(count(&doc, "polyline"), 4);
        let t = texts(&doc);
        for want in [
            "sqlite",
            "postgres",
            "Throughput",
            "p99 latency",
            "1",
            "8",
            "64",
        ] {
            assert!(
                t.iter().any(|x| x == want),
                "missing text {want:?} in {t:?}"
            );
        }
        assert!(t.iter().any(|x| x.contains("log scale")));
        // Every coordinate is a finite number inside the canvas.
        for n in doc.descendants().filter(|n| n.has_tag_name("circle")) {
            for a in ["cx", "cy"] {
                let v: f64 = n.attribute(a).and_then(|v| v.parse().ok()).unwrap_or(-1.0);
                assert!((0.0..=WIDTH).contains(&v), "{a}={v}");
            }
        }
    }

    #[test]
    fn chart_escapes_names_and_survives_odd_data() {
        let s = vec![
            series("a<b> & \"c\"", &[(4, 0.0, 0.0)]),
            series("nan", &[(4, f64::NAN, f64::INFINITY)]),
        ];
        let svg = chart_svg("t & <t>", &s);
        let doc = parse(&svg);
        let t = texts(&doc);
        assert!(t.iter().any(|x| x == "a<b> & \"c\""));
        assert!(t.iter().any(|x| x == "t & <t>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));

        let empty = chart_svg("none", &[]);
        let doc = parse(&empty);
        assert_eq!(count(&doc, "polyline"), 0);
        assert!(texts(&doc).iter().any(|x| x == "no completed runs"));
    }

    #[test]
    fn ticks_are_nice_and_cover_the_maximum() {
        assert_eq!(
            y_ticks(4300.0),
            vec![0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
        );
        assert_eq!(
            y_ticks(0.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = y_ticks(37.0);
        assert!(t.last().is_some_and(|m| *m >= 37.0));
        assert!(t.len() <= 7);
        assert_eq!(fmt_tick(20_000.0, 5000.0), "20k");
        assert_eq!(fmt_tick(2500.0, 500.0), "2500");
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
    }

    #[test]
    fn markdown_table_is_aligned() {
        let t = table(
            &["a", "num"],
            &[1],
            &[
                vec!["xx".into(), "1".into()],
                vec!["y".into(), "100".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| a   | num |");
        assert_eq!(lines[1], "| --- | --: |");
        assert_eq!(lines[2], "| xx  |   1 |");
        assert_eq!(lines[3], "| y   | 100 |");
    }

    fn record(target: &str, scenario: Scenario, conc: usize, ok: bool) -> RunRecord {
        let mut st = match Stats::new() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        st.record_answer(200, "200".into(), Duration::from_millis(2), true);
        RunRecord {
            target: target.into(),
            base_url: "http://127.0.0.1:1".into(),
            scenario,
            concurrency: conc,
            repeat: 1,
            empty_control: false,
            summary: st.summary(Duration::from_secs(1)),
            ok,
            checks: vec![Check {
                name: "no-5xx",
                ok,
                detail: if ok {
                    "fine".into()
                } else {
                    "1 violation(s): 1× 500".into()
                },
            }],
            server_rss_peak_kib: Some(20480),
            prefill: None,
            batches: Vec::new(),
            notes: vec!["a note".into()],
        }
    }

    fn report(runs: Vec<RunRecord>, failures: Vec<Failure>) -> Report {
        let mut r = Report {
            tool: "coupond-bench",
            version: "0",
            started_at: "t0".into(),
            finished_at: String::new(),
            settings: Settings {
                scenarios: vec![Scenario::Issue],
                concurrency: vec![1, 8],
                requests: Some(10),
                duration_s: None,
                prefill: 0,
                repeat: 1,
                setup_concurrency: 64,
                flash_limit: None,
                mix: Mix {
                    issue: 1,
                    redeem: 0,
                    replay: 0,
                    list: 0,
                },
                api_key_sent: false,
                request_timeout_s: 30.0,
            },
            servers: Vec::new(),
            runs,
            failures,
            warnings: Vec::new(),
            ok: false,
            exit_code: 0,
        };
        r.finish("t1".into());
        r
    }

    fn failure(server_fault: bool) -> Failure {
        Failure {
            target: "postgres".into(),
            scenario: None,
            concurrency: None,
            error: "could not start".into(),
            server_fault,
        }
    }

    #[test]
    fn repeated_runs_make_one_point_and_a_medians_table() {
        let mut runs = Vec::new();
        for (k, ms) in [(1, 1), (2, 4), (3, 2)] {
            let mut r = record("postgres", Scenario::Issue, 64, true);
            r.repeat = k;
            r.summary.throughput_rps = 1000.0 * f64::from(k);
            r.summary.latency_ms.p99 = f64::from(ms);
            runs.push(r);
        }
        let mut rep = report(runs, vec![]);
        rep.settings.repeat = 3;
        let series = rep.series();
        assert_eq!(series.len(), 1);
        assert_eq!(
            series[0].points,
            vec![Point {
                concurrency: 64,
                throughput_rps: 2000.0,
                p99_ms: 2.0
            }]
        );
        let md = rep.markdown(false);
        assert!(md.contains("| run |"), "{md}");
        assert!(md.contains("postgres issue c=64 run 2: 200 ×1"), "{md}");
        assert!(md.contains("Medians over the repeated runs"), "{md}");
        assert!(md.contains("| 1000, 2000, 3000 "), "{md}");
        assert!(
            !md.contains("| batch "),
            "no control runs, no batch column: {md}"
        );
        rep.runs[0].empty_control = true;
        let md = rep.markdown(false);
        assert!(md.contains("| batch "), "{md}");
        assert!(md.contains("| empty "), "{md}");
        assert!(
            md.contains("postgres issue c=64 empty batch run 1: 200 ×1"),
            "{md}"
        );
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0]), 2.0);
    }

    #[test]
    fn exit_codes() {
        let ok = || record("sqlite", Scenario::Issue, 1, true);
        assert_eq!(report(vec![ok()], vec![]).exit_code, EXIT_OK);
        assert_eq!(
            report(
                vec![ok(), record("sqlite", Scenario::Issue, 8, false)],
                vec![]
            )
            .exit_code,
            EXIT_CHECK_FAILED
        );
        assert_eq!(
            report(vec![ok()], vec![failure(false)]).exit_code,
            EXIT_BENCH_FAILED
        );
        assert_eq!(
            report(vec![ok()], vec![failure(true)]).exit_code,
            EXIT_CHECK_FAILED
        );
        assert_eq!(report(vec![], vec![]).exit_code, EXIT_BENCH_FAILED);
    }

    #[test]
    fn report_renders_and_round_trips_json() {
        let r = report(
            vec![
                record("sqlite", Scenario::Issue, 8, true),
                record("sqlite", Scenario::Issue, 1, true),
                record("postgres", Scenario::Issue, 1, false),
            ],
            vec![failure(false)],
        );
        let md = r.markdown(true);
        assert!(md.starts_with("# coupond-bench report"));
        assert!(md.contains("| backend"));
        assert!(md.contains("20.0 MiB"));
        assert!(md.contains("sqlite issue c=8: 200 ×1"));
        assert!(md.contains("FAILED: no-5xx"));
        assert!(md.contains("postgres issue c=1 no-5xx: 1 violation(s)"));
        assert!(md.contains("could not start"));
        assert!(md.contains("Result: FAILED"));

        let series = r.series();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].name, "sqlite");
        let concs: Vec<usize> = series[0].points.iter().map(|p| p.concurrency).collect();
        assert_eq!(concs, vec![1, 8]);

        let json = match r.to_json() {
            Ok(j) => j,
            Err(e) => panic!("{e}"),
        };
        let v: serde_json::Value = match serde_json::from_str(&json) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["runs"][0]["scenario"], "issue");
        assert_eq!(v["runs"][0]["summary"]["answers"]["200"], 1);
        assert!(v["runs"][0]["summary"]["latency_ms"]["p99"]
            .as_f64()
            .is_some());
    }

    #[test]
    fn report_dir_has_three_files() {
        let dir = std::env::temp_dir().join(format!(
            "coupond-bench-test-{}-{}",
            std::process::id(),
            line!()
        ));
        let r = report(vec![record("sqlite", Scenario::Issue, 1, true)], vec![]);
        assert!(r.write_dir(&dir).is_ok());
        for f in ["report.md", "results.json", "chart.svg"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        let svg = fs::read_to_string(dir.join("chart.svg")).unwrap_or_default();
        assert!(roxmltree::Document::parse(&svg).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
