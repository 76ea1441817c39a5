//! Hostile clients at the connection level, against the real binary (so memory and file
//! descriptors are the process's own): slow clients (slowloris: headers or a body dripped
//! a byte at a time), huge headers, and many connections at once. The server must bound
//! its memory, time such clients out, keep answering everyone else, and never crash.
//!
//! These run on SQLite: what is tested sits in front of the database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coupond_bench::client::Client;
use coupond_bench::invariants::Violations;
use coupond_reliability::db::{Backend, Database};
use coupond_reliability::server::{ServerProc, ServerSpec};
use coupond_reliability::{admin_key, figures, gaps};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection that has not sent its complete request head within this long must be
/// closed (hyper's own default `header_read_timeout` is 30 s; a little slack on top).
const HEADER_DEADLINE: Duration = Duration::from_secs(35);
/// The server's request timeout for these tests: a body dripped slower than this is cut.
const REQUEST_TIMEOUT: &str = "3s";

async fn server(name: &str) -> (Database, ServerProc, Client, String) {
    let db = Database::create(Backend::Sqlite).await.expect("database");
    let key = admin_key();
    let server = ServerProc::start(
        ServerSpec::new(name, &db, &key).env("COUPOND_REQUEST_TIMEOUT", REQUEST_TIMEOUT),
    )
    .await
    .expect("starting coupond");
    let client =
        Client::new(&server.base_url(), Some(&key), 8, Duration::from_secs(10)).expect("client");
    (db, server, client, key)
}

/// Normal requests while the attack goes on: each must be answered within 2 s.
async fn probe(client: &Client, n: usize) -> (usize, Duration) {
    let mut ok = 0;
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let answered = client
            .send(Method::GET, "/v1/coupons/?user_id=probe", None, None)
            .await
            .is_ok_and(|a| a.status == 200);
        worst = worst.max(started.elapsed());
        if answered && started.elapsed() < Duration::from_secs(2) {
            ok += 1;
        }
    }
    (ok, worst)
}

/// Reads until EOF or `deadline`; `Some(bytes read)` if the server closed the connection.
async fn closed_within(stream: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_and_bodies() {
    let (_db, mut server, client, key) = server("slowloris").await;
    let rss_before = server.rss_kib().unwrap_or(0);
    let addr = server.addr();
    const SLOW: usize = 64;

    // Headers dripped a byte every 500 ms, never finished.
    let started = Instant::now();
    let mut header_tasks = Vec::new();
    for i in 0..SLOW {
        header_tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return None;
            };
            let head = format!("GET /v1/coupons/?user_id=slow{i} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            if s.write_all(head.as_bytes()).await.is_err() {
                return Some(Duration::ZERO);
            }
            let deadline = Instant::now() + HEADER_DEADLINE;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if s.write_all(b"a").await.is_err() || Instant::now() >= deadline {
                    break;
                }
                let mut peek = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut peek)).await
                {
                    break;
                }
            }
            let closed = Instant::now() < deadline;
            closed.then(|| deadline.elapsed() + HEADER_DEADLINE)
        }));
    }
    // A body promised (Content-Length: 200) and dripped a byte a second.
    let mut body_tasks = Vec::new();
    for _ in 0..SLOW / 4 {
        let auth = format!("Bearer {key}");
        body_tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            let head = format!(
                "POST /v1/coupons/issue/ HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
                 Idempotency-Key: slow-body\r\nContent-Type: application/json\r\n\
                 Content-Length: 200\r\n\r\n{{"
            );
            s.write_all(head.as_bytes()).await.ok()?;
            let begun = Instant::now();
            let deadline = begun + Duration::from_secs(15);
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while Instant::now() < deadline {
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                {
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = s.write_all(b" ").await;
            }
            Some((begun.elapsed(), String::from_utf8_lossy(&got).to_string()))
        }));
    }
    // Everyone else is served meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (probe_ok, probe_worst) = probe(&client, 20).await;
    let rss_during = server.rss_kib().unwrap_or(0);

    let mut body_cut = 0;
    let mut body_answers = Vec::new();
    for t in body_tasks {
        if let Ok(Some((took, answer))) = t.await {
            if took < Duration::from_secs(10) {
                body_cut += 1;
            }
            body_answers.push(answer.lines().next().unwrap_or("").to_owned());
        }
    }
    let mut header_closed = Vec::new();
    for t in header_tasks {
        header_closed.push(t.await.ok().flatten());
    }
    let closed = header_closed.iter().filter(|c| c.is_some()).count();
    let alive = server.is_running();
    figures::record(
        "hostile-slowloris",
        &json!({
            "test": "slowloris_headers_and_bodies",
            "slow_header_connections": SLOW, "closed_by_server_within_35s": closed,
            "slow_body_requests": SLOW / 4, "slow_bodies_cut_within_10s": body_cut,
            "slow_body_first_lines": body_answers.iter().take(3).collect::<Vec<_>>(),
            "probes_answered_within_2s": probe_ok, "probe_worst_ms": probe_worst.as_millis() as u64,
            "rss_kib_before": rss_before, "rss_kib_during": rss_during,
            "alive": alive, "seconds": started.elapsed().as_secs(),
            "violations": 0, "known_gap_slowloris_headers": closed != SLOW,
        }),
    );
    let mut violations: BTreeMap<&str, Violations> = BTreeMap::new();
    if !alive {
        violations
            .entry("crashed")
            .or_default()
            .push(|| format!("coupond died:\n{}", server.log_tail()));
    }
    if probe_ok != 20 {
        violations
            .entry("service-during-attack")
            .or_default()
            .push(|| {
                format!(
                    "{probe_ok} of 20 normal requests answered within 2 s (worst {probe_worst:?})"
                )
            });
    }
    if body_cut != SLOW / 4 {
        violations.entry("slowloris-bodies").or_default().push(|| {
            format!(
                "{body_cut} of {} dripped bodies cut off by the request timeout \
                 ({REQUEST_TIMEOUT}); first lines: {body_answers:?}",
                SLOW / 4
            )
        });
    }
    if closed != SLOW {
        violations.entry("slowloris-headers").or_default().push(|| {
            format!(
                "{closed} of {SLOW} connections that never finish their headers were closed \
                 within {HEADER_DEADLINE:?}"
            )
        });
    }
    gaps::assert_clean(
        "slowloris_headers_and_bodies",
        &violations,
        &["slowloris-headers"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_and_urls() {
    let (_db, mut server, client, key) = server("huge-headers").await;
    let rss_before = server.rss_kib().unwrap_or(0);
    let addr = server.addr();
    let cases: Vec<(&str, String)> = vec![
        (
            "one 1 MiB header",
            format!("X-Big: {}\r\n", "a".repeat(1 << 20)),
        ),
        (
            "10,000 small headers",
            (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect(),
        ),
        (
            "64 KiB Idempotency-Key",
            format!("Idempotency-Key: {}\r\n", "k".repeat(64 << 10)),
        ),
        (
            "64 KiB Authorization",
            format!("Authorization: Bearer {}\r\n", "t".repeat(64 << 10)),
        ),
    ];
    let mut results = serde_json::Map::new();
    let mut bad = Vec::new();
    for round in 0..5 {
        for (name, headers) in &cases {
            let auth = if headers.starts_with("Authorization") {
                String::new()
            } else {
                format!("Authorization: Bearer {key}\r\n")
            };
            let request = format!(
                "POST /v1/coupons/issue/ HTTP/1.1\r\nHost: x\r\n{auth}{headers}\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // The server may stop reading (and close) before all of it is sent.
            let _ = s.write_all(request.as_bytes()).await;
            let got = closed_within(&mut s, Instant::now() + Duration::from_secs(10)).await;
            let text = got
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let status_line = text.lines().next().unwrap_or("(closed without an answer)");
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            let envelope = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            if round == 0 {
                results.insert(
                    (*name).to_owned(),
                    json!({"status": status_line, "code": envelope}),
                );
            }
            if got.is_none() {
                bad.push(format!("{name}: no answer and not closed within 10 s"));
            } else if status >= 500 {
                bad.push(format!("{name}: {status_line}"));
            } else if status != 0 && status != 431 && envelope.is_none() {
                // hyper answers 431 itself; anything the router saw gets the envelope.
                bad.push(format!("{name}: {status_line} without the JSON envelope"));
            }
        }
    }
    let (probe_ok, _) = probe(&client, 10).await;
    let rss_after = server.rss_kib().unwrap_or(0);
    let alive = server.is_running();
    figures::record(
        "hostile-huge-headers",
        &json!({"test": "huge_headers_and_urls", "answers": results,
                "rss_kib_before": rss_before, "rss_kib_after": rss_after, "alive": alive}),
    );
    assert!(alive, "coupond died:\n{}", server.log_tail());
    assert_eq!(probe_ok, 10, "normal requests after the huge ones");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections() {
    let db = Database::create(Backend::Sqlite).await.expect("database");
    let key = admin_key();
    // A low descriptor limit, so the flood reaches it: accept() then fails with EMFILE,
    // which must not kill the server nor stop it for good.
    let mut spec = ServerSpec::new("many-connections", &db, &key);
    spec.max_open_files = Some(512);
    let mut server = ServerProc::start(spec).await.expect("starting coupond");
    let client =
        Client::new(&server.base_url(), Some(&key), 4, Duration::from_secs(10)).expect("client");
    let addr = server.addr();
    let rss_before = server.rss_kib().unwrap_or(0);

    // 1. 400 clients at once, each one request on its own connection: all answered.
    let mut tasks = Vec::new();
    for i in 0..400 {
        let auth = format!("Bearer {key}");
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            let req = format!(
                "GET /v1/coupons/?user_id=c{i} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
                 Connection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let got = closed_within(&mut s, Instant::now() + Duration::from_secs(20)).await?;
            Some(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"))
        }));
    }
    let mut answered = 0;
    for t in tasks {
        if t.await.ok().flatten() == Some(true) {
            answered += 1;
        }
    }

    // 2. 2,000 idle connections, far past the descriptor limit, held open.
    // Until connecting stalls (the server has no descriptor left to accept with and the
    // kernel's accept queue is full).
    let mut idle = Vec::new();
    let mut refused = 0;
    let mut stalled = 0;
    while idle.len() < 2000 && stalled < 5 {
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                idle.push(s);
                stalled = 0;
            }
            _ => {
                refused += 1;
                stalled += 1;
            }
        }
    }
    // Until the server has taken all it can (its descriptors run out).
    let mut fds_flood = 0;
    for _ in 0..50 {
        let now = server.open_fds().unwrap_or(0);
        if now == fds_flood && now > 0 {
            break;
        }
        fds_flood = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_flood = server.rss_kib().unwrap_or(0);
    let alive_flood = server.is_running();
    // Is anyone else served while the idle connections hold every descriptor?
    let during = client
        .send(Method::GET, "/v1/coupons/?user_id=during", None, None)
        .await
        .map(|a| a.status)
        .ok();
    let held = idle.len();
    drop(idle);

    // 3. Once they are gone, normal service resumes by itself.
    let recovered_at = Instant::now();
    let mut recovered = None;
    while recovered_at.elapsed() < Duration::from_secs(30) {
        if client
            .send(Method::GET, "/v1/coupons/?user_id=after", None, None)
            .await
            .is_ok_and(|a| a.status == 200)
        {
            recovered = Some(recovered_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alive = server.is_running();
    figures::record(
        "hostile-many-connections",
        &json!({
            "test": "many_connections", "server_fd_limit": 512,
            "concurrent_requests": 400, "answered": answered,
            "idle_connections_opened": held, "connects_timed_out": refused,
            "server_fds_during_flood": fds_flood, "normal_request_during_flood": during,
            "rss_kib_before": rss_before, "rss_kib_flood": rss_flood,
            "alive_during_flood": alive_flood,
            "recovered_after_s": recovered.map(|d| d.as_secs_f64()),
        }),
    );
    assert!(alive_flood && alive, "coupond died:\n{}", server.log_tail());
    assert_eq!(
        answered, 400,
        "every one of 400 concurrent clients gets its answer"
    );
    assert!(
        recovered.is_some_and(|d| d < Duration::from_secs(5)),
        "service did not resume within 5 s after the flood ({recovered:?})"
    );
    assert!(
        rss_flood < rss_before + 128 * 1024,
        "memory grew from {rss_before} KiB to {rss_flood} KiB during the flood"
    );
}
