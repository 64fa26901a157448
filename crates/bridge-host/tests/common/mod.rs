//! Shared test support: a recording test double of the upstream API, the gateway binary,
//! and queue_v1 files written by hand.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod podman;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

pub const REAL_KEY: &str = "pcp_real_key_that_must_never_enter_the_sandbox";
pub const RUN_ID: &str = "run-under-test";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A test double of the Paperclip API that records everything that reaches it.
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests wait for a read lock: a test holds the write lock to keep them in flight.
    pub hold: Arc<tokio::sync::RwLock<()>>,
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let recorder = Recorder {
            url,
            seen: Arc::default(),
            hold: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let app = Router::new().fallback(record).with_state(recorder.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        recorder
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }
}

async fn record(State(recorder): State<Recorder>, request: Request) -> Response {
    use std::sync::atomic::Ordering;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap().to_vec();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect(),
        body: body.clone(),
    };
    recorder.seen.lock().unwrap().push(seen.clone());
    let now = recorder.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    recorder.max_in_flight.fetch_max(now, Ordering::SeqCst);
    drop(recorder.hold.read().await);
    recorder.in_flight.fetch_sub(1, Ordering::SeqCst);
    if seen.header("authorization") != Some(&format!("Bearer {REAL_KEY}")) {
        return (StatusCode::UNAUTHORIZED, "wrong credential").into_response();
    }
    answer(&seen)
}

/// Canned answers: echo JSON by default; binary and special paths for the tests.
fn answer(seen: &Seen) -> Response {
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/api/attachments/bin/content") => (
            [
                ("content-type", "application/octet-stream"),
                ("content-disposition", "attachment; filename=\"a.bin\""),
            ],
            Bytes::from(binary_blob()),
        )
            .into_response(),
        ("POST", p) if p.ends_with("/attachments") => (
            StatusCode::CREATED,
            [("content-type", "application/octet-stream")],
            Bytes::from(seen.body.clone()),
        )
            .into_response(),
        ("POST", p) if p.ends_with("/comments") => (
            StatusCode::CREATED,
            [
                ("content-type", "application/json"),
                ("etag", "\"c-1\""),
                ("location", "/api/issues/i1/comments/c-1"),
                ("x-internal-upstream", "must not reach the agent"),
            ],
            r#"{"id":"c-1"}"#,
        )
            .into_response(),
        _ => (
            [("content-type", "application/json"), ("etag", "\"e-1\"")],
            serde_json::json!({"method": seen.method, "path": seen.path, "query": seen.query})
                .to_string(),
        )
            .into_response(),
    }
}

/// A recording upstream and a temporary directory: most tests' first two steps.
pub async fn recorder_and_dir() -> (Recorder, tempfile::TempDir) {
    (Recorder::start().await, tempfile::tempdir().unwrap())
}

/// The upstream at `url` with the real key and no run id, bounded by `timeout`.
pub fn upstream_to(url: &str, timeout: Duration) -> bridge_host::proxy::Upstream {
    let key = bridge_host::proxy::Secret::new(REAL_KEY.into());
    bridge_host::proxy::Upstream::new(url, key, None, timeout).unwrap()
}

/// Every byte value, twice: not UTF-8.
pub fn binary_blob() -> Vec<u8> {
    (0..512u32).map(|i| (i % 256) as u8).rev().collect()
}

/// The gateway binary the tests deploy.
pub fn gateway_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PAPERCLIP_BRIDGE_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/paperclip-bridge-server");
    assert!(
        path.is_file(),
        "no gateway binary at {}: run `cargo build -p bridge-server` or `cargo xtask test`",
        path.display()
    );
    path
}

/// A queue_v1 request file, written exactly as the spec says (JSON line, tmp + rename).
pub fn write_request(queue: &Path, id: &str, json: &str) {
    let dir = queue.join("requests");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!("{id}.json.tmp"));
    std::fs::write(&tmp, format!("{json}\n")).unwrap();
    std::fs::rename(tmp, dir.join(format!("{id}.json"))).unwrap();
}

/// A request file body for `method path` with the given headers/body JSON fragments.
pub fn request_json(id: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        r#"{{"id":"{id}","method":"{method}","path":"{path}","query":"","headers":{headers},"body":{body},"createdAt":"2026-11-28T16:00:00.000Z"}}"#
    )
}

/// Waits (bounded) for `responses/<id>.json` and returns it parsed.
pub fn wait_response(queue: &Path, id: &str, bound: Duration) -> bridge_protocol::ResponseFile {
    let path = queue.join("responses").join(format!("{id}.json"));
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(&path) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no response for {id} within {bound:?}");
}

/// Async version of [`wait_response`].
pub async fn response(queue: &Path, id: &str) -> bridge_protocol::ResponseFile {
    let (queue, id) = (queue.to_path_buf(), id.to_owned());
    tokio::task::spawn_blocking(move || wait_response(&queue, &id, Duration::from_secs(20)))
        .await
        .unwrap()
}

/// Take options for tests: no wait, 1 MiB batches and envelopes, no recovery.
pub fn take_opts() -> bridge_host::transport::TakeOptions {
    bridge_host::transport::TakeOptions {
        wait: Duration::ZERO,
        max_batch_bytes: 1 << 20,
        envelope_limit: 1 << 20,
        include_claimed: false,
    }
}

/// A temporary queue directory with `requests/` and `responses/`.
pub fn queue_dir() -> QueueDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("requests")).unwrap();
    std::fs::create_dir_all(dir.path().join("responses")).unwrap();
    QueueDir(dir)
}

/// A test's queue directory: removed at the end, and listed on stderr first when the
/// test is failing (ripgrep's harness style), so a failure shows what the queue held.
pub struct QueueDir(tempfile::TempDir);

impl QueueDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for QueueDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- queue directory {} ---\n{}",
                self.path().display(),
                listing(self.path())
            );
        }
    }
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    match () {
        _ if t.is_symlink() => "symlink",
        _ if t.is_file() => "file",
        _ => "special",
    }
}

/// Every entry below `dir` with its kind and size, one a line.
pub fn listing(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let meta = entry.path().symlink_metadata();
            let rel = entry
                .path()
                .strip_prefix(dir)
                .unwrap_or(&entry.path())
                .display()
                .to_string();
            match meta {
                Ok(m) if m.is_dir() => {
                    out.push_str(&format!("{rel}/\n"));
                    stack.push(entry.path());
                }
                Ok(m) => out.push_str(&format!("{rel} ({}, {} bytes)\n", kind(&m), m.len())),
                Err(e) => out.push_str(&format!("{rel} ({e})\n")),
            }
        }
    }
    out
}

/// `pid: argv` of every process whose command line contains `needle`.
pub fn cmdlines_containing(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains(needle) {
            found.push(format!("{name}: {}", text.replace('\0', " ")));
        }
    }
    found
}
