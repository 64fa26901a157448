//! The E2B runner: first the fake E2B (`fake_e2b`) is proven against E2B's official Python
//! SDK, then our runner is tested against the fake: the sandbox's lifecycle on the control
//! plane, errors that name the call, and a whole bridge deployed through envd's files API
//! and served over one long-lived envd process. (The runner contract over the E2B runner
//! is in `runners.rs`, the transport contract in `transport_contract.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_e2b;

use std::path::PathBuf;
use std::time::Duration;

use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::Secret;
use bridge_host::runner::{E2bSandbox, Exec, Runner};
use common::*;
use fake_e2b::FakeE2b;

const T: Duration = Duration::from_secs(30);

/// The Python that has E2B's SDK: `PAPERCLIP_BRIDGE_E2B_PYTHON`, else the venv that
/// `cargo xtask test` (and so CI) makes under `target/`.
fn sdk_python() -> PathBuf {
    if let Some(python) = std::env::var_os("PAPERCLIP_BRIDGE_E2B_PYTHON") {
        return python.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("target/e2b-sdk/bin/python");
    assert!(
        python.exists(),
        "E2B's Python SDK is missing: run `cargo xtask test`, or `python3 -m venv target/e2b-sdk && target/e2b-sdk/bin/pip install e2b==2.63.0`"
    );
    python
}

#[tokio::test]
async fn the_official_python_sdk_accepts_the_fake() {
    let fake = FakeE2b::start().await;
    let work = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b_sdk/check_fake.py");
    let mut command = tokio::process::Command::new(sdk_python());
    command
        .arg(script)
        .envs(fake.env())
        .env("FAKE_DIR", work.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the SDK checks end")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SDK checks passed"),
        "E2B's SDK found the fake unfaithful:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The SDK did go through each part of the fake that our runner relies on.
    for call in [
        "POST /v2/sandboxes",
        "Start",
        "SendInput",
        "CloseStdin",
        "SendSignal",
        "List",
        "POST /files",
        "GET /files",
        "POST /sandboxes/{id}/timeout",
        "DELETE /sandboxes/{id}",
    ] {
        assert!(fake.calls(call) > 0, "the SDK never made {call}");
    }
}

#[tokio::test]
async fn a_created_sandbox_is_renewed_while_used_and_killed_at_the_end() {
    let fake = FakeE2b::start().await;
    let mut config = fake.config();
    config.sandbox_timeout = Duration::from_secs(3);
    let sandbox = E2bSandbox::create(&config, "base").await.unwrap();
    let id = sandbox.id().to_owned();
    assert_eq!(fake.sandbox(&id).unwrap().ttl_secs, 3);
    let out = sandbox
        .runner()
        .exec(Exec::new("echo in-e2b", T))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"in-e2b\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(fake.sandbox(&id).unwrap().renewals >= 1, "never renewed");
    sandbox.close().await.unwrap();
    assert!(!fake.sandbox(&id).unwrap().alive, "not killed");
}

#[tokio::test]
async fn an_attached_sandbox_is_left_running() {
    let fake = FakeE2b::start().await;
    let config = fake.config();
    let made = E2bSandbox::create(&config, "base").await.unwrap();
    let id = made.id().to_owned();
    let attached = E2bSandbox::attach(&config, &id).await.unwrap();
    let out = attached
        .runner()
        .exec(Exec::new("echo attached", T))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"attached\n");
    attached.close().await.unwrap();
    assert!(
        fake.sandbox(&id).unwrap().alive,
        "an attached sandbox was killed"
    );
    made.close().await.unwrap();
    assert!(!fake.sandbox(&id).unwrap().alive);
}

#[tokio::test]
async fn errors_name_the_call_and_what_came_back() {
    let fake = FakeE2b::start().await;
    let mut config = fake.config();
    config.api_key = Some(Secret::new("e2b_ffff".into()));
    let e = E2bSandbox::create(&config, "base").await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("POST /v2/sandboxes") && text.contains("401"),
        "{text}"
    );
    assert!(!text.contains("e2b_ffff"), "the key leaked: {text}");
    config.api_key = None;
    let e = E2bSandbox::create(&config, "base").await.unwrap_err();
    assert!(e.to_string().contains("E2B_API_KEY"), "{e}");
    let e = E2bSandbox::attach(&fake.config(), "no-such-sandbox")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("connect") && e.to_string().contains("404"),
        "{e}"
    );
    let e = E2bSandbox::attach(&fake.config(), "../etc")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a valid E2B name"), "{e}");
}

#[tokio::test]
async fn debug_mode_needs_no_control_plane_and_no_key() {
    let fake = FakeE2b::start_debug().await;
    let config = fake.config();
    assert!(config.debug && config.api_key.is_none());
    let sandbox = E2bSandbox::create(&config, "base").await.unwrap();
    assert_eq!(sandbox.id(), bridge_host::runner::e2b::DEBUG_SANDBOX_ID);
    let out = sandbox
        .runner()
        .exec(Exec::new("echo local", T))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"local\n");
    sandbox.close().await.unwrap();
    assert_eq!(fake.calls("POST /v2/sandboxes"), 0);
    assert_eq!(fake.calls("DELETE /sandboxes/{id}"), 0);
}

#[tokio::test]
async fn a_killed_sandbox_refuses_execs_with_the_status() {
    let fake = FakeE2b::start().await;
    let sandbox = E2bSandbox::create(&fake.config(), "base").await.unwrap();
    let runner = sandbox.runner();
    sandbox.close().await.unwrap();
    let e = runner.exec(Exec::new("true", T)).await.unwrap_err();
    assert!(
        e.to_string().contains("envd Start") && e.to_string().contains("502"),
        "{e}"
    );
    assert!(e.transient(), "a 502 may pass");
}

#[tokio::test]
async fn a_stream_cut_by_envd_is_reported_not_hung() {
    let fake = FakeE2b::start().await;
    let sandbox = E2bSandbox::create(&fake.config(), "base").await.unwrap();
    let mut stream = sandbox
        .runner()
        .stream(bridge_host::runner::Spawn {
            script: "sleep 30".into(),
            env: Vec::new(),
            cwd: None,
        })
        .await
        .unwrap();
    fake.kill_all();
    let status = tokio::time::timeout(T, stream.process.wait())
        .await
        .expect("the end of the process is seen")
        .unwrap();
    assert!(!status.success(), "{status:?}");
    sandbox.close().await.unwrap();
}

#[tokio::test]
async fn a_bridge_deploys_through_the_files_api_and_serves_over_one_envd_process() {
    let fake = FakeE2b::start().await;
    let sandbox = E2bSandbox::create(&fake.config(), "base").await.unwrap();
    let (recorder, dir) = recorder_and_dir().await;
    let upstream = upstream_to(&recorder.url, Duration::from_secs(10));
    let mut config = BridgeConfig::new(gateway_bin(), dir.path().to_path_buf(), upstream);
    config.stop_grace = Duration::from_secs(5);
    // No liveness checks during the test: every Start it counts is the bridge's own.
    config.restart.check_interval = Duration::from_secs(3600);
    let bridge = Bridge::start(sandbox.runner(), config).await.unwrap();
    assert_eq!(
        fake.calls("POST /files"),
        1,
        "the binary goes through the files API once"
    );
    let agent = || async {
        let mut exec = Exec::new(
            r#"for i in 1 2 3 4 5; do curl -sS -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/agents/me"; done"#,
            T,
        );
        exec.env = bridge.agent_env();
        let out = sandbox.runner().exec(exec).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200 200 200 200 200 ",
            "{}",
            out.stderr_text()
        );
    };
    agent().await;
    let starts = fake.calls("Start");
    agent().await;
    assert_eq!(recorder.count("GET", "/api/agents/me"), 10);
    // The agent's exec is one Start; its five calls crossed the open session, no new exec.
    assert_eq!(fake.calls("Start"), starts + 1, "requests cost execs");
    assert!(
        fake.calls("SendInput") > 0,
        "the session's commands go through SendInput"
    );
    bridge.stop().await.unwrap();
    sandbox.close().await.unwrap();
}

#[tokio::test]
async fn the_cli_runs_an_agent_in_a_new_e2b_sandbox_and_kills_it_after() {
    let fake = FakeE2b::start().await;
    let recorder = Recorder::start().await;
    // The fake's sandbox is this machine's file system: a directory of the test's own.
    let workdir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(fake.env())
        .env("PAPERCLIP_API_URL", &recorder.url)
        .env("PAPERCLIP_API_KEY", REAL_KEY)
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .args(["run", "--sandbox", "e2b", "--e2b-template", "base", "--workdir"])
        .arg(workdir.path())
        .args(["--", "sh", "-c"])
        .arg(r#"env; curl -sS -o /dev/null -w 'status=%{http_code}\n' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/agents/me"; exit 4"#)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the run ends")
        .unwrap();
    let report = format!(
        "{:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "the agent's status is ours: {report}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("status=200"), "{report}");
    for secret in [REAL_KEY, fake_e2b::API_KEY] {
        assert!(
            !stdout.contains(secret),
            "a host secret reached the agent: {report}"
        );
    }
    assert_eq!(fake.calls("POST /v2/sandboxes"), 1, "{report}");
    assert_eq!(
        fake.calls("DELETE /sandboxes/{id}"),
        1,
        "the sandbox was not killed: {report}"
    );
    assert_eq!(recorder.count("GET", "/api/agents/me"), 1);
}
