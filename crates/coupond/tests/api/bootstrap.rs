//! The first admin key, with the real binary on a fresh database: generated and printed
//! once, or taken from `COUPOND_BOOTSTRAP_ADMIN_KEY` and never printed.

use std::time::Duration;

use crate::backend_test;
use crate::helpers::*;

/// The lines of `lines` that look like a key (`cpd_…` alone on the line).
fn printed_keys(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("cpd_"))
        .map(str::to_owned)
        .collect()
}

/// A key this test chooses, as an operator would.
fn chosen_key(label: &str) -> String {
    format!("cpd_chosen_{label}_{}_0123456789abcdef", std::process::id())
}

async fn assert_admin(server: &ChildServer, key: &str) {
    let client = server.client_with(Some(key));
    let r = client.list("").await;
    assert_eq!(r.status, 200, "{key:?} is a working key: {r:?}");
    let r = client
        .create_batch(Some(&new_key("boot-batch")), &seed_batch())
        .await;
    assert_eq!(r.status, 201, "{key:?} is an admin key: {r:?}");
}

async fn assert_refused(server: &ChildServer, key: &str) {
    server
        .client_with(Some(key))
        .list("")
        .await
        .assert_error(401, "UNAUTHENTICATED");
}

async fn the_first_start_prints_a_generated_admin_key_once(backend: Backend) {
    let db = FreshDatabase::create(backend).await;
    let args = ["--database-url", db.url(), "--db-max-connections", "2"];

    let first = ChildServer::start(&args, &[]).await;
    // Printed before the server answers, so it is all there by now.
    let keys = printed_keys(&first.stdout_lines());
    assert_eq!(
        keys.len(),
        1,
        "one key on stdout: {:?}",
        first.stdout_lines()
    );
    let key = keys[0].clone();
    let random = key.strip_prefix("cpd_").expect("prefix");
    assert!(
        random.len() == 40 && random.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key:?} is cpd_ and 40 characters of base62"
    );
    assert_admin(&first, &key).await;
    assert_refused(&first, &format!("{key}0")).await;
    let out = first.stop().await;
    assert!(out.exit.success(), "{out:?}");
    assert_eq!(printed_keys(&out.stdout), vec![key.clone()], "{out:?}");
    assert_eq!(
        out.stdout.iter().filter(|l| l.contains(&key)).count(),
        1,
        "printed once: {out:?}"
    );
    assert!(
        !out.stderr.iter().any(|l| l.contains(&key)),
        "the key is not logged: {out:?}"
    );

    // Second start: the key exists, nothing is created or printed.
    let second = ChildServer::start(&args, &[]).await;
    assert_admin(&second, &key).await;
    let out = second.stop().await;
    assert!(out.exit.success(), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "a start on a database with keys prints nothing on stdout: {out:?}"
    );
    assert!(!out.stderr.iter().any(|l| l.contains(&key)), "{out:?}");
    let listed = run_coupond(&["keys", "list"], &[("COUPOND_DATABASE_URL", db.url())]).await;
    assert!(listed.success, "{listed:?}");
    assert_eq!(
        listed.stdout.lines().count(),
        2,
        "a header and the one key: {listed:?}"
    );

    // The variable set later does not add a key to a database that has one.
    let late = chosen_key("late");
    let third = ChildServer::start(&args, &[("COUPOND_BOOTSTRAP_ADMIN_KEY", late.as_str())]).await;
    assert_refused(&third, &late).await;
    assert_admin(&third, &key).await;
    let out = third.stop().await;
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        !out.stdout
            .iter()
            .chain(&out.stderr)
            .any(|l| l.contains(&late)),
        "{out:?}"
    );
}
backend_test!(the_first_start_prints_a_generated_admin_key_once);

async fn the_bootstrap_key_can_be_chosen_and_is_never_printed(backend: Backend) {
    let db = FreshDatabase::create(backend).await;
    let args = ["--database-url", db.url(), "--db-max-connections", "2"];
    let chosen = chosen_key("first");
    let env = [("COUPOND_BOOTSTRAP_ADMIN_KEY", chosen.as_str())];

    let first = ChildServer::start(&args, &env).await;
    assert_admin(&first, &chosen).await;
    let out = first.stop().await;
    assert!(out.exit.success(), "{out:?}");
    assert!(
        printed_keys(&out.stdout).is_empty(),
        "no generated key either: {out:?}"
    );
    assert!(
        !out.stdout
            .iter()
            .chain(&out.stderr)
            .any(|l| l.contains(&chosen)),
        "the chosen key is not printed: {out:?}"
    );

    // It stays the admin key on the next start, without the variable.
    let second = ChildServer::start(&args, &[]).await;
    assert_admin(&second, &chosen).await;
    let out = second.stop().await;
    assert!(out.stdout.is_empty(), "{out:?}");
}
backend_test!(the_bootstrap_key_can_be_chosen_and_is_never_printed);

async fn a_bootstrap_key_too_short_stops_the_start(backend: Backend) {
    let db = FreshDatabase::create(backend).await;
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let mut command = tokio::process::Command::from(coupond_command());
    command
        .args(["serve", "--bind", &bind, "--database-url", db.url()])
        .env("COUPOND_BOOTSTRAP_ADMIN_KEY", "cpd_short")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("coupond serve with a bad bootstrap key is still running after 30s")
        .expect("running coupond");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr.contains("COUPOND_BOOTSTRAP_ADMIN_KEY must be 24 to 256"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cpd_short"),
        "the bad value is not echoed: {stderr}"
    );
    let listed = run_coupond(&["keys", "list"], &[("COUPOND_DATABASE_URL", db.url())]).await;
    assert_eq!(listed.stdout.lines().count(), 1, "no key: {listed:?}");
}
backend_test!(a_bootstrap_key_too_short_stops_the_start);
