#!/usr/bin/env python3
"""Every figure of docs/PERFORMANCE.md, measured again with coupond-bench.

    cargo build --release -p coupond -p coupond-bench
    python3 crates/coupond-bench/figures.py            # about 20 minutes
    python3 crates/coupond-bench/figures.py --quick    # fewer requests and runs, to try it

Each measurement spawns fresh servers (`--spawn`), runs several times and keeps the
median; raw JSON documents go to target/figures/, the summary to
target/figures/figures.md, and the concurrency sweep's chart to docs/perf/. Run it on a
quiet machine: the client and the server share its cores.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target", "release", "coupond-bench")
OUT = os.path.join(ROOT, "target", "figures")


def bench(name, args):
    """One coupond-bench invocation with --json; returns its runs."""
    path = os.path.join(OUT, f"{name}.json")
    cmd = [BENCH, "--json", "-q"] + args
    started = time.time()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(path, "w") as f:
        f.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{name}: coupond-bench failed ({done.returncode}): {' '.join(cmd)}")
    doc = json.loads(done.stdout)
    if not doc["ok"]:
        raise SystemExit(f"{name}: an invariant failed, see {path}")
    print(f"  {name}: {time.time() - started:.0f} s", flush=True)
    return doc["runs"]


def figures(runs):
    return {
        "rps": runs["summary"]["throughput_rps"],
        "p50": runs["summary"]["latency_ms"]["p50"],
        "p99": runs["summary"]["latency_ms"]["p99"],
        "rss_mib": (runs.get("server_rss_peak_kib") or 0) / 1024,
        "requests": runs["summary"]["requests"],
    }


def median_of(name, args, repeat):
    """Runs `args` `repeat` times; the median run by throughput, and every throughput."""
    all_runs = []
    for i in range(repeat):
        all_runs += [figures(r) for r in bench(f"{name}-{i + 1}", args)]
    return summarize(all_runs)


def summarize(all_runs):
    """The median run by throughput, with every run's throughput, the median p99 and the
    highest RSS."""
    by_rps = sorted(all_runs, key=lambda r: r["rps"])
    median = dict(by_rps[len(by_rps) // 2])
    median["all_rps"] = [round(r["rps"]) for r in all_runs]
    median["p99_median"] = statistics.median(r["p99"] for r in all_runs)
    median["rss_max_mib"] = max(r["rss_mib"] for r in all_runs)
    return median


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma list of sections to run")
    a = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(BENCH):
        raise SystemExit("build first: cargo build --release -p coupond -p coupond-bench")
    repeat = 1 if a.quick else 3
    n = 5_000 if a.quick else 50_000
    prefill = 20_000 if a.quick else 1_000_000
    million = 20_000 if a.quick else 1_000_000
    only = set(a.only.split(",")) if a.only else None
    want = lambda s: only is None or s in only
    results = {}
    both = ["sqlite", "postgres"]

    if want("scenarios"):
        print("scenarios at concurrency 64", flush=True)
        for backend in both:
            for scenario in ["issue", "replay", "ping", "flash-sale", "redeem", "list", "mixed"]:
                r = median_of(
                    f"{scenario}-{backend}",
                    ["--spawn", backend, "--scenario", scenario, "--concurrency", "64",
                     "--requests", str(n)],
                    repeat,
                )
                results[f"{scenario}/{backend}"] = r

    if want("prefill"):
        # One prefill per backend serves every measured run (--repeat): each run adds its
        # coupons to the same batch, so run k starts from prefill + (k-1) * n. Before each
        # of them (--with-empty) the same run on a fresh empty batch of the same server, so
        # the ratio is not at the mercy of the machine's drift between invocations.
        print(f"issue on a batch already holding {prefill} coupons", flush=True)
        for backend in both:
            runs = bench(
                f"prefill-{backend}",
                ["--spawn", backend, "--scenario", "issue", "--concurrency", "64",
                 "--requests", str(n), "--prefill", str(prefill), "--repeat", str(repeat),
                 "--with-empty"],
            )
            for label, pick in [("empty", True), ("prefilled", False)]:
                chosen = [figures(r) for r in runs if bool(r.get("empty_control")) == pick]
                results[f"issue-{label}/{backend}"] = summarize(chosen)
            ratio = results[f"issue-prefilled/{backend}"]["rps"] / results[f"issue-empty/{backend}"]["rps"]
            print(f"  {backend}: prefilled / empty = {ratio:.1%}", flush=True)

    if want("sweep"):
        print("concurrency sweep (chart in docs/perf/)", flush=True)
        report = os.path.join(ROOT, "docs", "perf")
        runs = bench(
            "sweep",
            ["--spawn", "sqlite,postgres", "--scenario", "issue",
             "--concurrency", "1,8,16,32,64,128", "--requests", str(max(n // 2, 2000)),
             "--report", report],
        )
        results["sweep"] = [
            {"backend": r["target"], "concurrency": r["concurrency"], **figures(r)} for r in runs
        ]

    if want("pool"):
        print("PostgreSQL pool size", flush=True)
        for size in [8, 16, 32]:
            r = median_of(
                f"pool-{size}",
                ["--spawn", "postgres", "--scenario", "issue", "--concurrency", "64",
                 "--requests", str(n // 2), "--server-env", f"COUPOND_DB_MAX_CONNECTIONS={size}"],
                repeat,
            )
            results[f"pool/{size}"] = r

    if want("memory"):
        print(f"memory over {million} requests", flush=True)
        results["memory/sqlite-issue"] = median_of(
            "memory-sqlite",
            ["--spawn", "sqlite", "--scenario", "issue", "--concurrency", "64",
             "--requests", str(million)],
            1,
        )
        results["memory/postgres-mixed"] = median_of(
            "memory-postgres",
            ["--spawn", "postgres", "--scenario", "mixed", "--concurrency", "64",
             "--requests", str(million // 4)],
            1,
        )

    with open(os.path.join(OUT, "figures.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = ["| measurement | throughput (req/s) | p50 ms | p99 ms | peak RSS MiB | runs (req/s) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results.items():
        if name == "sweep":
            continue
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rss_max_mib']:.1f} "
            f"| {', '.join(map(str, r['all_rps']))} |"
        )
    if "sweep" in results:
        lines += ["", "| backend | concurrency | req/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
        for r in results["sweep"]:
            lines.append(
                f"| {r['backend']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(OUT, "figures.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
