//! Prints the figures the reliability tests wrote (`target/reliability/*.json`, or
//! `COUPOND_RELIABILITY_OUT`) as a Markdown table: what CI shows after its reliability
//! steps and what docs/RELIABILITY.md quotes. Exits 1 if any recorded violation is not 0.

use std::process::ExitCode;

use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_u64()
}

fn main() -> ExitCode {
    let dir = coupond_reliability::figures::out_dir();
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(e) => {
            eprintln!("no figures in {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    files.sort();
    println!("| test | backend | profile | HTTP requests | kills survived | outages survived | invariant violations |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    let mut bad = false;
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            eprintln!("{}: not JSON", path.display());
            bad = true;
            continue;
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let violations = num(&v, &["verdict", "violations"])
            .or_else(|| num(&v, &["violations"]))
            .or_else(|| num(&v, &["leaks"]))
            .or_else(|| num(&v, &["failures"]));
        if violations.is_some_and(|n| n > 0) {
            bad = true;
        }
        let requests = num(&v, &["http_requests"]).or_else(|| num(&v, &["flash_sale", "requests"]));
        let show = |n: Option<u64>| n.map_or_else(|| "–".to_owned(), |n| n.to_string());
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            v["backend"].as_str().unwrap_or("sqlite"),
            v["profile"].as_str().unwrap_or("–"),
            show(requests),
            show(num(&v, &["kills"])),
            show(num(&v, &["outages"])),
            show(violations),
        );
    }
    if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
