//! The tool's CI smoke run: `coupond-bench --spawn sqlite,postgres --smoke` against the
//! `coupond` cargo built beside it (every scenario, briefly, invariants checked). Part of
//! `cargo test --workspace`, so the tool keeps working; the figures in
//! docs/PERFORMANCE.md come from release builds and `figures.py`, not from here.

use std::path::PathBuf;
use std::process::Command;

fn coupond_beside(bench: &str) -> PathBuf {
    let dir = PathBuf::from(bench)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let coupond = dir.join(format!("coupond{}", std::env::consts::EXE_SUFFIX));
    if !coupond.exists() {
        // `cargo test --workspace` has built it for coupond's own tests; alone, this
        // test builds it.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "coupond", "--bin", "coupond"])
            .status()
            .expect("running cargo build -p coupond");
        assert!(status.success(), "cargo build -p coupond failed: {status}");
    }
    coupond
}

#[test]
fn smoke_every_scenario_on_both_backends() {
    let bench = env!("CARGO_BIN_EXE_coupond-bench");
    let coupond = coupond_beside(bench);
    let out = Command::new(bench)
        .args(["--spawn", "sqlite,postgres", "--smoke", "--coupond-bin"])
        .arg(&coupond)
        .output()
        .expect("running coupond-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "coupond-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("Result: OK"), "{stdout}");
    for scenario in [
        "issue",
        "flash-sale",
        "redeem",
        "replay",
        "list",
        "mixed",
        "ping",
    ] {
        for backend in ["sqlite", "postgres"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.contains(backend) && l.contains(scenario)),
                "no {backend} {scenario} run in:\n{stdout}"
            );
        }
    }
}
