//! The demo upstream: a tiny stand-in for the Paperclip API that records what reached it.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    run_id: Option<String>,
    headers: Vec<String>,
}

#[derive(Debug, Clone)]
struct Shared {
    key: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Added before every answer (benchmarks stand in for a slower API with it).
    latency: std::time::Duration,
}

/// A running demo upstream on 127.0.0.1 (this machine's loopback, not the sandbox's).
#[derive(Debug)]
pub struct DemoUpstream {
    port: u16,
    shared: Shared,
}

impl DemoUpstream {
    pub async fn start(key: String) -> Result<Self> {
        Self::start_with_latency(key, std::time::Duration::ZERO).await
    }

    /// Like `start`, answering each request after `latency`.
    pub async fn start_with_latency(key: String, latency: std::time::Duration) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo upstream")?;
        let port = listener.local_addr()?.port();
        let shared = Shared {
            key,
            seen: Arc::default(),
            latency,
        };
        let app = Router::new().fallback(answer).with_state(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "demo upstream stopped");
            }
        });
        Ok(Self { port, shared })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests for `path` arrived (of the first thousand).
    pub fn count(&self, path: &str) -> usize {
        self.shared
            .seen
            .lock()
            .map(|seen| seen.iter().filter(|s| s.path == path).count())
            .unwrap_or(0)
    }

    /// Lines describing every request that arrived.
    pub fn report(&self, key: &str) -> Vec<String> {
        let seen = self
            .shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        if seen.is_empty() {
            return vec!["nothing".into()];
        }
        seen.iter()
            .map(|s| {
                let auth = match &s.authorization {
                    Some(a) if *a == format!("Bearer {key}") => {
                        "the real key (injected by the host)"
                    }
                    Some(_) => "a WRONG credential",
                    None => "NO credential",
                };
                format!(
                    "{} {} with {auth}, run id {}, headers [{}]",
                    s.method,
                    s.path,
                    s.run_id.as_deref().unwrap_or("-"),
                    s.headers.join(", ")
                )
            })
            .collect()
    }
}

async fn answer(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str, headers: &HeaderMap| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        authorization: header("authorization", &parts.headers),
        run_id: header("x-paperclip-run-id", &parts.headers),
        headers: parts.headers.keys().map(|k| k.to_string()).collect(),
    };
    let authorized = seen.authorization.as_deref() == Some(&format!("Bearer {}", shared.key));
    if let Ok(mut all) = shared.seen.lock() {
        // Bounded: benchmarks send many thousands.
        if all.len() < 1000 {
            all.push(seen.clone());
        }
    }
    if !shared.latency.is_zero() {
        // Even a zero sleep waits for the timer's next tick (up to 1 ms).
        tokio::time::sleep(shared.latency).await;
    }
    let body = axum::body::to_bytes(body, MAX_UPLOAD_BYTES)
        .await
        .unwrap_or_default();
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            json(r#"{"error":"bad credential"}"#),
        )
            .into_response();
    }
    route(&seen.method, &seen.path, &body)
}

fn route(method: &str, path: &str, body: &[u8]) -> Response {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["api", "agents", "me"]) => {
            json(r#"{"id":"demo-agent","name":"Demo agent","role":"engineer"}"#).into_response()
        }
        ("POST", ["api", "issues", issue, "comments"]) => (
            StatusCode::CREATED,
            [("location", format!("/api/issues/{issue}/comments/c-1"))],
            json(r#"{"id":"c-1","body":"hello from the sandbox"}"#),
        )
            .into_response(),
        ("POST", ["api", "companies", _, "issues", _, "attachments"]) => {
            let digest = bridge_host::deploy::sha256_hex(body);
            let text = format!(
                r#"{{"id":"a-1","bytes":{},"sha256":"{digest}"}}"#,
                body.len()
            );
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                text,
            )
                .into_response()
        }
        ("GET", ["api", "attachments", id, "content"]) => {
            // A sized id gets that many bytes of the pattern; any other a tiny binary file.
            let bytes = match sized(id) {
                Some(n) => Bytes::from(pattern(n)),
                None => Bytes::from_static(&[0x89, b'P', b'N', b'G', 0, 0xff, 0xfe, 1]),
            };
            ([("content-type", "application/octet-stream")], bytes).into_response()
        }
        _ => (StatusCode::NOT_FOUND, json(r#"{"error":"not found"}"#)).into_response(),
    }
}

/// Largest body the upstream reads; the bridge's default body limit is a little over 10 MiB.
const MAX_UPLOAD_BYTES: usize = 16 << 20;

/// Prefix of an attachment id whose content is that many bytes of [`pattern`]:
/// `size-10485760` is 10 MiB (benchmarks download it and check every byte).
pub const SIZED_ATTACHMENT: &str = "size-";

/// The byte count a sized attachment id asks for, up to [`MAX_UPLOAD_BYTES`].
fn sized(id: &str) -> Option<usize> {
    let n: usize = id.strip_prefix(SIZED_ATTACHMENT)?.parse().ok()?;
    (n <= MAX_UPLOAD_BYTES).then_some(n)
}

/// `n` bytes that look random (every byte value, no runs), the same on every call, so a
/// receiver can check a transfer byte by byte: a xorshift generator's low bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn json(text: &'static str) -> impl IntoResponse {
    ([("content-type", "application/json")], text)
}
