//! Paperclip as the orchestrator: its `process` adapter starts `paperclip-bridge run` for a
//! heartbeat run, and the agent works its issue from inside a network-isolated sandbox.
//! The run's outcome follows the agent's exit status. Run with `cargo xtask e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Paperclip {
    url: String,
    company: String,
    agent: String,
    client: reqwest::Client,
}

impl Paperclip {
    fn from_facts() -> (Paperclip, Value) {
        let path = std::env::var("PAPERCLIP_E2E_FACTS")
            .expect("PAPERCLIP_E2E_FACTS is not set: run the suite with `cargo xtask e2e`");
        let facts: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pc = Paperclip {
            url: facts["apiUrl"].as_str().unwrap().to_owned(),
            company: facts["companyId"].as_str().unwrap().to_owned(),
            agent: facts["agentId"].as_str().unwrap().to_owned(),
            client: reqwest::Client::new(),
        };
        (pc, facts)
    }

    /// A board request (local_trusted: no credentials).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Points the agent's process adapter at `paperclip-bridge run ... -- AGENT...`.
    async fn use_bridge(&self, bin: &Path, agent: &[&str]) {
        let mut args = vec![
            "run".to_owned(),
            "--sandbox".into(),
            "bwrap".into(),
            "--gateway-bin".into(),
            bin.join("paperclip-bridge-server").display().to_string(),
            // The agent's script is a host file: the sandbox shows it only when bound in.
            "--ro-bind".into(),
            bin.display().to_string(),
            "--".into(),
        ];
        args.extend(agent.iter().map(|s| s.to_string()));
        let config = json!({
            "adapterType": "process",
            "adapterConfig": { "command": bin.join("paperclip-bridge").display().to_string(), "args": args }
        });
        let (status, body) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/api/agents/{}", self.agent),
                Some(config),
            )
            .await;
        assert_eq!(status, 200, "setting the adapter: {body}");
    }

    /// Cancels runs of the agent still going (the seeded one idles), so a new one starts.
    async fn cancel_running(&self) {
        let runs = self
            .get(&format!("/api/companies/{}/heartbeat-runs", self.company))
            .await;
        for run in runs.as_array().unwrap() {
            if run["agentId"] == self.agent.as_str()
                && matches!(run["status"].as_str(), Some("running" | "queued"))
            {
                let id = run["id"].as_str().unwrap();
                self.call(
                    reqwest::Method::POST,
                    &format!("/api/heartbeat-runs/{id}/cancel"),
                    Some(json!({})),
                )
                .await;
            }
        }
    }

    /// Creates an issue assigned to the agent as `todo`: Paperclip wakes the agent itself.
    async fn assign(&self, title: &str) -> String {
        let body = json!({"title": title, "description": "bridge e2e", "assigneeAgentId": self.agent, "status": "todo"});
        let (status, issue) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/companies/{}/issues", self.company),
                Some(body),
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "creating the issue: {issue}"
        );
        issue["id"].as_str().unwrap().to_owned()
    }

    /// Waits (bounded) for the agent's newest run started after `since` to finish.
    async fn finished_run(&self, since: &str, bound: Duration) -> Value {
        let deadline = Instant::now() + bound;
        loop {
            let runs = self
                .get(&format!("/api/companies/{}/heartbeat-runs", self.company))
                .await;
            let newest = runs.as_array().unwrap().iter().find(|r| {
                r["agentId"] == self.agent.as_str()
                    && r["startedAt"].as_str().is_some_and(|t| t > since)
            });
            if let Some(run) = newest {
                if !matches!(run["status"].as_str(), Some("running" | "queued")) {
                    return run.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no finished run within {bound:?}: {runs}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The run's log as text (every string in Paperclip's answer, one per line).
    async fn run_log(&self, run: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/heartbeat-runs/{run}/log"),
                None,
            )
            .await;
        assert_eq!(status, 200, "run log: {body}");
        let mut out = Vec::new();
        strings(&body, &mut out);
        out.join("\n")
    }

    async fn now(&self) -> String {
        // Paperclip's own clock, via a fresh run list timestamp is not available: use ours.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let secs = t.as_secs() - 2;
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S.000Z"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// Copies the binaries and agent scripts where the server's (unprivileged) user can run them.
fn shared_bin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("pcb-e2e-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let from = |var: &str, name: &str| {
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/debug")
                .join(name)
        })
    };
    let files = [
        (
            from("PAPERCLIP_BRIDGE_BIN", "paperclip-bridge"),
            "paperclip-bridge",
        ),
        (
            from("PAPERCLIP_BRIDGE_SERVER_BIN", "paperclip-bridge-server"),
            "paperclip-bridge-server",
        ),
        (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/process-agent.sh"),
            "process-agent.sh",
        ),
    ];
    for (src, name) in files {
        let dst = dir.path().join(name);
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[tokio::test]
#[ignore = "needs a real Paperclip server: run `cargo xtask e2e`"]
async fn paperclip_runs_its_agent_through_the_bridge() {
    let (pc, _facts) = Paperclip::from_facts();
    let (_keep, bin) = shared_bin_dir();
    let marker = format!("bridge-process-{}", std::process::id());
    let script = bin.join("process-agent.sh").display().to_string();
    pc.use_bridge(&bin, &["sh", &script, &marker]).await;
    pc.cancel_running().await;
    let since = pc.now().await;
    let issue = pc.assign(&format!("{marker} work")).await;
    let run = pc.finished_run(&since, Duration::from_secs(240)).await;
    let run_id = run["id"].as_str().unwrap();
    let log = pc.run_log(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{log}");
    let comments = pc.get(&format!("/api/issues/{issue}/comments")).await;
    let list = comments.as_array().cloned().unwrap_or_default();
    let ours = list
        .iter()
        .find(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
        .unwrap_or_else(|| panic!("no comment: {comments}"));
    assert_eq!(ours["authorAgentId"], pc.agent.as_str());
    assert_eq!(ours["createdByRunId"], run_id);
    let doc = pc
        .get(&format!("/api/issues/{issue}/documents/report"))
        .await;
    assert!(doc.to_string().contains(&marker), "{doc}");
    let issue_now = pc.get(&format!("/api/issues/{issue}")).await;
    assert_eq!(issue_now["status"], "done", "{issue_now}");
    no_secret_in_the_log(&log);
}

#[tokio::test]
#[ignore = "needs a real Paperclip server: run `cargo xtask e2e`"]
async fn a_failing_agent_fails_its_run() {
    let (pc, _facts) = Paperclip::from_facts();
    let (_keep, bin) = shared_bin_dir();
    pc.use_bridge(&bin, &["sh", "-c", "echo failing on purpose; exit 3"])
        .await;
    pc.cancel_running().await;
    let since = pc.now().await;
    pc.assign(&format!("bridge-fail-{} work", std::process::id()))
        .await;
    let run = pc.finished_run(&since, Duration::from_secs(240)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exitCode"], 3, "{run}");
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The run log holds neither a JWT nor the bridge token (the agent printed its hash).
fn no_secret_in_the_log(log: &str) {
    assert!(
        !log.contains("eyJ"),
        "a JWT-looking string is in the run log:\n{log}"
    );
    let at = log
        .find("token-sha256 ")
        .unwrap_or_else(|| panic!("the agent's output is not in the run log:\n{log}"));
    let hash: String = log[at + 13..].chars().take(64).collect();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{log}"
    );
    for word in log.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        if word.len() == 32 {
            use sha2::Digest as _;
            let digest: String = sha2::Sha256::digest(word.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_ne!(digest, hash, "the bridge token is in the run log");
        }
    }
}
