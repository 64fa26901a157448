//! The examples in `examples/` run as a user runs them, against a recording upstream: each
//! must deploy its bridge, get its one call answered with the real key added on the host,
//! print the answer and stop cleanly. `cargo test` builds the examples along with the tests;
//! to run this file alone, `cargo build -p bridge-host --examples` first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Bound on one example's whole run (deploy, call, stop).
const RUN_BOUND: Duration = Duration::from_secs(120);

/// What both examples print: the recorder's echo of the call and its status.
const ANSWER: &str = r#"{"method":"GET","path":"/api/agents/me","query":""} (HTTP 200)"#;

/// The example binary `name`, built by cargo next to this test's own directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("../examples").join(name);
    assert!(
        path.is_file(),
        "no example binary at {}: build it with `cargo build -p bridge-host --examples`",
        path.display()
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert!(
        modified(&path) >= modified(&source),
        "{} is older than its source: `cargo build -p bridge-host --examples`",
        path.display()
    );
    path
}

/// Runs example `name` against a fresh recorder; returns the recorder and its stdout.
async fn run_example(name: &str) -> (Recorder, String) {
    let recorder = Recorder::start().await;
    let mut command = tokio::process::Command::new(example(name));
    command
        .arg(gateway_bin())
        .arg(&recorder.url)
        .env("UPSTREAM_API_KEY", REAL_KEY)
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_BOUND, command.output())
        .await
        .unwrap_or_else(|_| panic!("example {name} ran past {RUN_BOUND:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    (recorder, stdout)
}

/// The one call reached the upstream once, with the real key (the recorder answers 401
/// to anything else), and its answer is what the example printed.
fn check(name: &str, recorder: &Recorder, stdout: &str) {
    assert_eq!(stdout.trim(), ANSWER, "example {name}'s output");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1, "example {name}: the upstream saw {seen:?}");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {REAL_KEY}").as_str())
    );
}

#[tokio::test]
async fn local_sandbox_example_calls_through_the_bridge() {
    let (recorder, stdout) = run_example("local_sandbox").await;
    check("local_sandbox", &recorder, &stdout);
}

#[tokio::test]
async fn custom_runner_example_calls_through_the_bridge() {
    let (recorder, stdout) = run_example("custom_runner").await;
    check("custom_runner", &recorder, &stdout);
}
