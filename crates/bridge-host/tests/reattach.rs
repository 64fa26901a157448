//! The host process dies mid-load (`kill -9` of `paperclip-bridge up`); the gateway lives
//! on in the sandbox, and `paperclip-bridge worker --attach` serves its queue again. Every
//! caller gets an answer, nothing is applied twice, and a success always means applied.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Unique mutations sent while the host dies.
const CALLS: usize = 40;

/// The exec prefix: the "sandbox" is this machine, so the gateway outlives the host.
const PREFIX: &str = "env --";

fn cli(recorder: &Recorder) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_API_URL", &recorder.url)
        .env("PAPERCLIP_API_KEY", REAL_KEY)
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// Starts `up` and returns it with the agent environment it printed.
fn up(recorder: &Recorder, workdir: &std::path::Path) -> (Child, serde_json::Value) {
    let mut child = cli(recorder)
        .args(["up", "--sandbox", "exec", "--exec", PREFIX, "--workdir"])
        .arg(workdir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let env = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, env)
}

/// Kills the gateway `up` left running (its pid is in `ready.json`).
struct GatewayGuard(std::path::PathBuf);

impl Drop for GatewayGuard {
    fn drop(&mut self) {
        let ready = self.0.join("paperclip-bridge/queue/ready.json");
        let pid = std::fs::read_to_string(ready)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_u64());
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test]
async fn a_worker_reattached_after_the_host_died_loses_and_doubles_nothing() {
    let (recorder, dir) = recorder_and_dir().await;
    let (mut host, env) = up(&recorder, dir.path());
    let _gateway = GatewayGuard(dir.path().to_path_buf());
    let url = env["PAPERCLIP_API_URL"].as_str().unwrap().to_owned();
    let token = env["PAPERCLIP_API_KEY"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                // Spread over the kill: some before, some during, some after.
                tokio::time::sleep(Duration::from_millis(25 * i as u64)).await;
                let response = client
                    .post(format!("{url}/api/issues/r{i}/comments"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(format!("{{\"body\":{i}}}"))
                    .timeout(Duration::from_secs(40))
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The upstream stalls: the calls that reach it now are in flight when the host dies.
    let held = recorder.hold.write().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    host.kill().unwrap(); // SIGKILL: nothing of the host's shutdown runs
    let _ = host.wait();
    let applied_at_the_kill = recorder.seen().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worker = cli(&recorder)
        .args(["worker", "--exec", PREFIX, "--attach"])
        .arg(dir.path())
        .spawn()
        .unwrap();
    drop(held);
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    let _ = worker.kill();
    let _ = worker.wait();

    let mut report = Vec::new();
    for (i, status) in statuses.iter().enumerate() {
        let applied = recorder.count("POST", &format!("/api/issues/r{i}/comments"));
        let fine = match status {
            201 => applied == 1,
            409 => applied <= 1, // indeterminate: claimed by the dead host
            _ => applied == 0,
        };
        if !fine {
            report.push(format!(
                "call {i}: status {status}, applied {applied} times"
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}\nstatuses {statuses:?}");
    assert!(
        applied_at_the_kill < CALLS,
        "the host died after all the calls: nothing to re-attach for"
    );
    assert!(
        statuses.contains(&409),
        "no call was in flight at the kill: {statuses:?}"
    );
    let after = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        after > applied_at_the_kill,
        "no call was served after re-attaching: {statuses:?}"
    );
}
