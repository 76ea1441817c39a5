//! What each test measured, one JSON file per test under `target/reliability/` (or
//! `COUPOND_RELIABILITY_OUT`), so CI prints them and docs/RELIABILITY.md quotes them.

use std::path::PathBuf;

use serde_json::Value;

pub const OUT_ENV: &str = "COUPOND_RELIABILITY_OUT";

pub fn out_dir() -> PathBuf {
    match std::env::var_os(OUT_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/reliability")
            .components()
            .collect(),
    }
}

/// Writes `figures` as `<out>/<name>.json` and prints it (shown with `--nocapture`, and
/// for failing tests). A file that cannot be written is reported, not fatal: the test's
/// assertions are what decide.
pub fn record(name: &str, figures: &Value) {
    let dir = out_dir();
    let text = serde_json::to_string_pretty(figures).unwrap_or_else(|_| figures.to_string());
    println!("reliability figures {name}: {text}");
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{name}.json")), text + "\n"))
    {
        eprintln!("warning: could not write figures to {}: {e}", dir.display());
    }
}
