//! The bridge through a real podman container: deployed with `podman exec -i` into a
//! container with no network (see `common/podman.rs`), serving the agent's calls over
//! the stream transport. (The runner contract over the same prefix runs in `runners.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{Exec, Runner};
use common::podman::{PodmanBox, HOME};
use common::*;

const T: Duration = Duration::from_secs(30);

/// Five allowed calls and one the policy denies, then whether the host is reachable.
const AGENT: &str = r#"call() { curl -sS -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$@"; }
for i in 1 2 3 4 5; do
  call -X POST "$PAPERCLIP_API_URL/api/issues/i1/comments" -H 'Content-Type: application/json' -d '{}'
done
call "$PAPERCLIP_API_URL/api/companies"
curl -sS -m 2 -o /dev/null "$UPSTREAM" 2>/dev/null && echo reached || echo unreachable"#;

#[tokio::test]
async fn a_bridge_deployed_with_podman_exec_serves_the_agent_over_one_session() {
    let recorder = Recorder::start().await;
    let container = PodmanBox::start();
    let runner = Arc::new(container.runner());
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
    let mut exec = Exec::new(AGENT, T).cwd(&workdir);
    exec.env = bridge.agent_env();
    // The upstream's address on the host: the container has no route to it.
    exec.env.push(("UPSTREAM".into(), recorder.url.clone()));
    let out = runner.exec(exec).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.success(), "{text}\n{}", out.stderr_text());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..5], ["201"; 5], "{text}");
    assert_eq!(lines[5..], ["403", "unreachable"], "{text}");
    assert_eq!(recorder.count("POST", "/api/issues/i1/comments"), 5);
    assert_eq!(
        recorder.seen().len(),
        5,
        "the denied call never left the host"
    );
    assert_eq!(
        bridge.worker().exec_count(),
        1,
        "one podman exec carried every request"
    );
    bridge.stop().await.unwrap();
}
