//! queue_v1 interoperability with Paperclip's own TypeScript bridge, both ways:
//! our gateway served by Paperclip's host worker, and Paperclip's gateway served by our
//! worker (forwarding to the real Paperclip API). Run with `cargo xtask e2e`, which gives
//! the Node.js binary and the installed `@paperclipai/adapter-utils`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "interop-token-0123456789abcdefghij";

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name} is not set: run `cargo xtask e2e`")),
    )
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/paperclip-peer.mjs")
}

fn binary(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/debug")
            .join(name)
    })
}

/// A child process killed (and its log printed on failure) when dropped.
struct Proc(Child, PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.1.display(),
                std::fs::read_to_string(&self.1).unwrap_or_default()
            );
        }
    }
}

fn spawn(mut command: Command, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program()));
    Proc(child, log)
}

fn node(args: &[&std::ffi::OsStr]) -> Command {
    let mut command = Command::new(env_path("PAPERCLIP_NODE"));
    command
        .env("ADAPTER_UTILS", env_path("ADAPTER_UTILS"))
        .args(args);
    command
}

fn wait_ready(queue: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(queue.join("ready.json")) {
            return serde_json::from_str(&text).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no ready.json in {}",
            queue.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn call(
    url: &str,
    method: reqwest::Method,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
#[ignore = "needs Paperclip's bridge (Node.js): run `cargo xtask e2e`"]
async fn our_gateway_is_served_by_paperclips_host_worker() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let mut gateway = Command::new(binary(
        "PAPERCLIP_BRIDGE_SERVER_BIN",
        "paperclip-bridge-server",
    ));
    gateway
        .env("PAPERCLIP_BRIDGE_QUEUE_DIR", &queue)
        .env("PAPERCLIP_BRIDGE_TOKEN", TOKEN);
    let _gateway = spawn(gateway, dir.path().join("gateway.log"));
    let ready = wait_ready(&queue);
    let host = node(&[
        peer_script().as_os_str(),
        "host".as_ref(),
        queue.as_os_str(),
    ]);
    let _host = spawn(host, dir.path().join("host.log"));
    let base = ready["baseUrl"].as_str().unwrap();
    let (status, headers, body) = call(
        &format!("{base}/api/issues/i1/comments?x=1"),
        reqwest::Method::POST,
        Some(r#"{"body":"hi"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["etag"], "\"paperclip-host\"");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/api/issues/i1/comments");
    assert_eq!(echoed["query"], "?x=1");
    assert_eq!(echoed["body"], r#"{"body":"hi"}"#);
    let (status, _, _) = call(&format!("{base}/api/agents/me"), reqwest::Method::GET, None).await;
    assert_eq!(status, 201, "a bodyless GET passes too");
}

#[tokio::test]
#[ignore = "needs Paperclip's bridge (Node.js) and a Paperclip server: run `cargo xtask e2e`"]
async fn paperclips_gateway_is_served_by_our_worker() {
    let facts: Value =
        serde_json::from_str(&std::fs::read_to_string(env_path("PAPERCLIP_E2E_FACTS")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let source = dir.path().join("paperclip-gateway.mjs");
    let status = node(&[
        peer_script().as_os_str(),
        "gateway-source".as_ref(),
        source.as_os_str(),
    ])
    .status()
    .unwrap();
    assert!(status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gateway = node(&[source.as_os_str()]);
    gateway
        .env("PAPERCLIP_BRIDGE_QUEUE_DIR", &queue)
        .env("PAPERCLIP_BRIDGE_TOKEN", TOKEN)
        .env("PAPERCLIP_BRIDGE_PORT", port.to_string());
    let _gateway = spawn(gateway, dir.path().join("gateway.log"));
    let ready = wait_ready(&queue);
    let mut worker = Command::new(binary("PAPERCLIP_BRIDGE_BIN", "paperclip-bridge"));
    worker
        .args(["worker", "--shared-fs", "--queue-dir"])
        .arg(&queue)
        .args(["--api-url", facts["apiUrl"].as_str().unwrap()])
        .args(["--api-key-file", facts["keyFile"].as_str().unwrap()])
        .args(["--run-id", facts["runId"].as_str().unwrap()])
        .env_remove("PAPERCLIP_API_KEY");
    let _worker = spawn(worker, dir.path().join("worker.log"));
    let base = ready["baseUrl"].as_str().unwrap();
    let (status, _, body) =
        call(&format!("{base}/api/agents/me"), reqwest::Method::GET, None).await;
    assert_eq!(status, 200, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        me["id"], facts["agentId"],
        "the real Paperclip answered as the agent"
    );
    let (status, _, body) =
        call(&format!("{base}/api/companies"), reqwest::Method::GET, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("Route not allowed: GET /api/companies"),
        "{body}"
    );
}
