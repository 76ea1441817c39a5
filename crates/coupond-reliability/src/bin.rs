//! The `coupond` binary under test: `COUPOND_BIN` if set, else the one cargo builds into
//! this test's own target directory, rebuilt first when it is missing or older than the
//! sources of `crates/coupond` (cargo builds a package's binaries only for that package's
//! own tests, so a test of this crate cannot rely on it being fresh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

pub const BIN_ENV: &str = "COUPOND_BIN";

/// The path of the binary, built once per test process if need be.
pub fn coupond() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .components()
        .collect()
}

fn locate() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("{BIN_ENV}={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    // target/<profile>/deps/<test>-<hash>: the binary is target/<profile>/coupond.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?
        .to_path_buf();
    let bin = profile_dir.join(format!("coupond{}", std::env::consts::EXE_SUFFIX));
    if is_fresh(&bin) {
        return Ok(bin);
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let target_dir = profile_dir
        .parent()
        .context("target/<profile> has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("coupond-reliability: building coupond ({profile} profile)");
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "-p", "coupond", "--bin", "coupond", "--profile"])
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .context("running cargo build -p coupond")?;
    if !status.success() {
        bail!("cargo build -p coupond failed ({status})");
    }
    if !bin.is_file() {
        bail!("cargo built coupond but {} is not there", bin.display());
    }
    Ok(bin)
}

/// Whether `bin` exists and is newer than every source it is built from.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = workspace();
    let sources = [
        root.join("crates/coupond/src"),
        root.join("crates/coupond/migrations"),
        root.join("crates/coupond/Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    sources
        .iter()
        .all(|p| newest(p).is_none_or(|newest| newest <= built))
}

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}
