//! End to end: a real Paperclip server, the real `paperclip-bridge` CLI, and an agent in a
//! real network-isolated sandbox that works its issue through the bridge. Afterwards the
//! test checks in Paperclip itself what happened. Run with `cargo xtask e2e`, which
//! starts the server and tells these tests where it is (`PAPERCLIP_E2E_FACTS`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// What `cargo xtask paperclip up` wrote about the running server.
struct Facts {
    api_url: String,
    port: u16,
    agent_id: String,
    issue_id: String,
    run_id: String,
    key_file: PathBuf,
}

impl Facts {
    fn load() -> Facts {
        let path = std::env::var("PAPERCLIP_E2E_FACTS")
            .expect("PAPERCLIP_E2E_FACTS is not set: run the suite with `cargo xtask e2e`");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("facts lack {k}"))
                .to_owned()
        };
        Facts {
            api_url: s("apiUrl"),
            port: v["port"].as_u64().unwrap() as u16,
            agent_id: s("agentId"),
            issue_id: s("issueId"),
            run_id: s("runId"),
            key_file: PathBuf::from(s("keyFile")),
        }
    }

    fn key(&self) -> String {
        std::fs::read_to_string(&self.key_file)
            .unwrap()
            .trim()
            .to_owned()
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary of this workspace, as built by `cargo xtask e2e`.
fn binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    std::env::var_os(&var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug").join(name))
}

/// Collects a child's output lines on a channel (and keeps them for failure reports).
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for pipe in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    rx
}

#[tokio::test]
#[ignore = "needs a real Paperclip server: run `cargo xtask e2e`"]
async fn an_isolated_agent_works_its_issue_through_the_bridge() {
    let facts = Facts::load();
    let key = facts.key();
    let marker = format!("e2e-{}", std::process::id());
    let scratch = tempfile::tempdir().unwrap();
    let audit = scratch.path().join("audit.jsonl");
    let agent = workspace().join("tests/e2e/agents/work-issue.sh");
    let mut child = Command::new(binary("paperclip-bridge"))
        .args(["run", "--sandbox", "bwrap", "--api-url", &facts.api_url])
        // The agent's script is a host file: the sandbox shows it only when bound in.
        .arg("--ro-bind")
        .arg(agent.parent().unwrap())
        .arg("--api-key-file")
        .arg(&facts.key_file)
        .args(["--run-id", &facts.run_id])
        .arg("--audit-log")
        .arg(&audit)
        .arg("--gateway-bin")
        .arg(binary("paperclip-bridge-server"))
        .arg("--")
        .arg("sh")
        .arg(&agent)
        .args([&facts.issue_id, &facts.port.to_string(), &marker])
        .env_remove("PAPERCLIP_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary("paperclip-bridge").display()));
    let output = lines(&mut child);
    let mut transcript = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut checked_secrets = false;
    let status = loop {
        while let Ok(line) = output.try_recv() {
            if let Some(dir) = line.strip_prefix("CHECKPOINT ") {
                no_key_in_the_sandbox(&key, dir);
                checked_secrets = true;
            }
            transcript.push(line);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the run did not finish in 180 s:\n{}",
                transcript.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    transcript.extend(output.try_iter());
    let report = transcript.join("\n");
    assert!(
        status.success(),
        "the agent or the bridge failed ({status}):\n{report}"
    );
    assert!(
        checked_secrets,
        "the agent never reached its checkpoint:\n{report}"
    );
    assert!(
        !report.contains(&key),
        "the real key appeared in the run's output"
    );
    check_in_paperclip(&facts, &marker, &report).await;
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"status\":400") && l.contains("\"decision\":\"invalid\"")),
        "the forged request is not in the audit log:\n{audit}"
    );
    assert!(audit
        .lines()
        .any(|l| l.contains("\"status\":403") && l.contains("/api/companies")));
}

/// While the agent runs: the real key is in no process's argv, in no sandbox process's
/// environment, and in no file under the sandbox directory (looked at from inside).
fn no_key_in_the_sandbox(key: &str, sandbox_dir: &str) {
    let mut sandbox_pid = None;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(key),
            "real key in the argv of pid {pid}"
        );
        let environ = String::from_utf8_lossy(
            &std::fs::read(entry.path().join("environ")).unwrap_or_default(),
        )
        .into_owned();
        if environ.contains("PAPERCLIP_API_BRIDGE_MODE=queue_v1") {
            assert!(
                !environ.contains(key),
                "real key in the environment of sandbox pid {pid}"
            );
            sandbox_pid = Some(pid);
        }
    }
    let pid = sandbox_pid.expect("no sandbox process found");
    let grep = Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "-U",
            "-n",
            "-m",
            "--preserve-credentials",
            "grep",
            "-rlF",
            "--",
            key,
            sandbox_dir,
        ])
        .output()
        .unwrap();
    assert_eq!(
        grep.status.code(),
        Some(1),
        "grep found the key in: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

/// Reads back, as the board, what the agent did.
async fn check_in_paperclip(facts: &Facts, marker: &str, report: &str) {
    let board = reqwest::Client::new();
    let get = |path: String| {
        let board = board.clone();
        let url = format!("{}{path}", facts.api_url);
        async move {
            let r = board.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, comments) = get(format!("/api/issues/{}/comments", facts.issue_id)).await;
    assert_eq!(status, 200);
    let list = comments
        .as_array()
        .cloned()
        .or_else(|| comments["comments"].as_array().cloned())
        .unwrap_or_default();
    let ours = list
        .iter()
        .find(|c| c["body"].as_str().is_some_and(|b| b.contains(marker)))
        .unwrap_or_else(|| panic!("comment not in Paperclip: {comments}\n{report}"));
    assert_eq!(ours["authorAgentId"], facts.agent_id.as_str(), "{ours}");
    assert_eq!(ours["createdByRunId"], facts.run_id.as_str(), "{ours}");
    let (status, doc) = get(format!("/api/issues/{}/documents/plan", facts.issue_id)).await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc.to_string().contains(marker), "{doc}");
    let (status, issue) = get(format!("/api/issues/{}", facts.issue_id)).await;
    assert_eq!(
        status, 200,
        "the denied DELETE must not have removed the issue"
    );
    assert_eq!(issue["status"], "done", "{issue}");
}
