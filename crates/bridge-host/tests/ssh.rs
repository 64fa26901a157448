//! The bridge through real OpenSSH: deployed with `ssh -T` into a namespace sandbox whose
//! only way in is `sshd -i` (see `common/ssh.rs`), serving the agent's calls over the
//! stream transport, from the library and from the CLI. (The runner contract over the
//! same ssh runs in `runners.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{Exec, Runner};
use common::ssh::{SshSandbox, HOME};
use common::*;

const T: Duration = Duration::from_secs(30);

const CURL: &str = r#"call() { curl -sS -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$@"; }"#;

/// Ten allowed calls and one the policy denies, then where the gateway runs.
const AGENT: &str = r#"for i in 1 2 3 4 5 6 7 8 9 10; do
  call -X POST "$PAPERCLIP_API_URL/api/issues/i1/comments" -H 'Content-Type: application/json' -d '{"body":"it'"'"'s here"}'
done
call "$PAPERCLIP_API_URL/api/companies"
hostname; id -un"#;

#[tokio::test]
async fn a_bridge_deployed_through_ssh_serves_the_agent_over_one_session() {
    let recorder = Recorder::start().await;
    let ssh = SshSandbox::start();
    let runner = Arc::new(ssh.runner());
    let upstream = Upstream::new(
        &recorder.url,
        Secret::new(REAL_KEY.into()),
        Some(RUN_ID.into()),
        Duration::from_secs(10),
    )
    .unwrap();
    let workdir = PathBuf::from(HOME).join("bridge");
    let mut config = BridgeConfig::new(gateway_bin(), workdir.clone(), upstream);
    config.worker.drain_timeout = Duration::from_millis(300);
    let bridge = Bridge::start(runner.clone(), config).await.unwrap();
    let mut exec = Exec::new(format!("{CURL}\n{AGENT}"), T).cwd(&workdir);
    exec.env = bridge.agent_env();
    let out = runner.exec(exec).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.success(), "{text}\n{}", out.stderr_text());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..10], ["201"; 10], "{text}");
    assert_eq!(lines[10..], ["403", "sandbox", "agent"], "{text}");
    let comments = recorder.count("POST", "/api/issues/i1/comments");
    assert_eq!(comments, 10, "the denied call never left the host");
    let seen = recorder.seen();
    assert!(seen.iter().all(|s| s.body == br#"{"body":"it's here"}"#));
    assert_eq!(
        bridge.worker().exec_count(),
        1,
        "one ssh session carried every request"
    );
    // The gateway and the stream transport's session (the same binary) run in the
    // sandbox until the bridge stops.
    assert_eq!(gateways(runner.as_ref()).await, 2);
    bridge.stop().await.unwrap();
    assert_eq!(gateways(runner.as_ref()).await, 0);
}

/// How many processes of the gateway binary the sandbox runs.
async fn gateways(runner: &dyn Runner) -> usize {
    let count = "for p in /proc/[0-9]*; do readlink \"$p/exe\"; done | grep -c '/paperclip-bridge-server$' || true";
    let out = runner.exec(Exec::new(count, T)).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text} {}", out.stderr_text()))
}

/// One call, where the agent runs and its environment; exits 3.
const CLI_AGENT: &str = r#"call "$PAPERCLIP_API_URL/api/agents/me"; pwd; env; exit 3"#;

#[tokio::test]
async fn the_cli_runs_an_agent_through_an_ssh_prefix() {
    let recorder = Recorder::start().await;
    let ssh = SshSandbox::start();
    let workdir = format!("{HOME}/bridge");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_API_URL", &recorder.url)
        .env("PAPERCLIP_API_KEY", REAL_KEY)
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .args(["run", "--sandbox", "exec", "--exec", &ssh.prefix_text()])
        .args(["--workdir", &workdir, "--transport", "stream", "--"])
        .args(["sh", "-c", &format!("{CURL}\n{CLI_AGENT}")]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{report}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["200", &workdir], "{report}");
    // The agent starts from the bridge's environment, not the ssh session's.
    let names: Vec<&str> = lines[2..]
        .iter()
        .filter_map(|l| l.split('=').next())
        .collect();
    assert!(names.contains(&"PAPERCLIP_API_URL"), "{report}");
    for name in names {
        assert!(
            !name.starts_with("SSH_") && !["MAIL", "USER", "LOGNAME", "SHELL"].contains(&name),
            "the ssh session's {name} reached the agent:\n{report}"
        );
    }
    assert_eq!(recorder.count("GET", "/api/agents/me"), 1);
}
