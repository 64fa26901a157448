//! `paperclip-bridge doctor`, the real binary: every check passes on this machine, and an
//! unreachable API, a missing bubblewrap, a failing API and a gateway that does not match
//! its `.sha256` each fail with a fix while the other checks still run. Output is printed
//! on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

/// The checks' names, in the order they print.
const CHECKS: [&str; 5] = [
    "tools",
    "user namespaces",
    "gateway binary",
    "api url",
    "end to end",
];

fn doctor(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .arg("doctor")
        .args(args)
        .stdin(Stdio::null());
    command
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The status word of each check, by name; panics (with the report) if one is missing.
fn statuses(out: &Output) -> Vec<(&'static str, String)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    CHECKS
        .iter()
        .map(|name| {
            let line = stdout
                .lines()
                .find(|l| l[6.min(l.len())..].starts_with(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no line for {name}:\n{}", text(out)));
            (*name, line[..6].trim().to_owned())
        })
        .collect()
}

/// The fix printed right under the FAIL line of `name`.
fn fix_of(out: &Output, name: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("FAIL  {name}:")))
        .unwrap_or_else(|| panic!("{name} did not fail:\n{}", text(out)));
    let fix = lines.get(at + 1).copied().unwrap_or("");
    assert!(
        fix.starts_with("      fix: "),
        "no fix under {name}:\n{}",
        text(out)
    );
    fix.to_owned()
}

fn expect(out: &Output, want: &[(&str, &str)]) {
    let got = statuses(out);
    for (name, status) in want {
        let seen = &got.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(seen, status, "{name}:\n{}", text(out));
    }
}

#[tokio::test]
async fn every_check_passes_on_this_machine() {
    let api = Recorder::start().await;
    let out = output(doctor(&["--api-url", &api.url])).await;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), CHECKS.len(), "{report}");
    assert!(stdout.lines().all(|l| l.starts_with("ok    ")), "{report}");
    expect(&out, &CHECKS.map(|name| (name, "ok")));
    // The API check really asked the API, and the isolation was checked from inside.
    assert_eq!(api.count("GET", "/api/health"), 1, "{report}");
    assert!(stdout.contains("unreachable from inside"), "{report}");
}

#[tokio::test]
async fn an_unreachable_api_fails_with_a_fix_and_the_rest_still_runs() {
    // A port that was just ours and is closed now: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = output(doctor(&["--api-url", &url])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    expect(
        &out,
        &[
            ("tools", "ok"),
            ("user namespaces", "ok"),
            ("gateway binary", "ok"),
            ("api url", "FAIL"),
            ("end to end", "ok"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Connection refused"), "{}", text(&out));
    assert!(
        fix_of(&out, "api url").contains("--api-url"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn an_api_answering_5xx_fails() {
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::BAD_GATEWAY });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let out = output(doctor(&["--api-url", &url])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    expect(&out, &[("api url", "FAIL"), ("end to end", "ok")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("answered 502"),
        "{}",
        text(&out)
    );
    fix_of(&out, "api url");
}

#[tokio::test]
async fn a_missing_bubblewrap_fails_with_the_package_to_install() {
    let out = output(doctor(&["--bwrap", "/nonexistent/bin/bwrap"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    expect(
        &out,
        &[
            ("tools", "FAIL"),
            ("user namespaces", "skip"),
            ("gateway binary", "ok"),
            // No --api-url: nothing to check.
            ("api url", "skip"),
            ("end to end", "skip"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("missing: /nonexistent/bin/bwrap"),
        "{}",
        text(&out)
    );
    let fix = fix_of(&out, "tools");
    assert!(fix.contains("apt-get install bubblewrap"), "{}", text(&out));
}

#[tokio::test]
async fn a_gateway_that_does_not_match_its_sha256_fails() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("paperclip-bridge-server");
    std::fs::copy(gateway_bin(), &binary).unwrap();
    let wrong = format!("{}  paperclip-bridge-server\n", "0".repeat(64));
    std::fs::write(dir.path().join("paperclip-bridge-server.sha256"), wrong).unwrap();
    let out = output(doctor(&["--gateway-bin", binary.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    expect(&out, &[("tools", "ok"), ("gateway binary", "FAIL")]);
    assert!(
        fix_of(&out, "gateway binary").contains("cargo xtask dist"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn an_exec_prefix_without_isolation_fails_the_isolation_check() {
    // `env` as the exec prefix runs the "sandbox" on this machine, host network and all:
    // the call through the gateway works (curl), the direct one must not, and does.
    let dir = tempfile::tempdir().unwrap();
    let args = ["--sandbox", "exec", "--exec", "env", "--workdir"];
    let mut command = doctor(&args);
    command.arg(dir.path());
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    expect(&out, &[("tools", "ok"), ("end to end", "FAIL")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("it is not isolated"), "{}", text(&out));
    assert!(
        fix_of(&out, "end to end").contains("network"),
        "{}",
        text(&out)
    );
}
