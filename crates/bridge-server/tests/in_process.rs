//! The gateway in process. Every HTTP behaviour that needs no socket (auth, body limits,
//! content types, queue depth, response mapping, header passthrough, time-outs, late
//! answers) drives the router with `tower::ServiceExt::oneshot` against a thread playing
//! the queue_v1 host; `start` + `run` on port 0 cover the library API and its shutdown.
//! What needs the real binary or a socket (signals, exit codes, `ready.json`, hyper's
//! head limits, a caller hanging up) is in tests/gateway.rs.

// Test helpers (here and in tests/common) are not #[test] functions, so clippy's in-test
// allowance does not reach them; a failed helper step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use bridge_protocol::env::GatewayConfig;
use bridge_protocol::wire::{Headers, RequestFile, ResponseFile};
use bridge_server::{app, AppState};
use common::{echo, entries, write_response, Host, Reply, TOKEN};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

fn config(queue: &std::path::Path, env: &[(&str, &str)]) -> GatewayConfig {
    let mut vars: HashMap<String, String> = [
        ("PAPERCLIP_BRIDGE_QUEUE_DIR", queue.display().to_string()),
        ("PAPERCLIP_BRIDGE_TOKEN", TOKEN.to_owned()),
        ("PAPERCLIP_BRIDGE_PORT", "0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    GatewayConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

fn response(id: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) -> ResponseFile {
    let headers: Headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ResponseFile::new(id, status, headers, body, "2026-11-28T00:00:00.000Z".into())
}

/// The router on a temporary queue, with the settings in `env` on top of the basics.
struct Gateway {
    _dir: tempfile::TempDir,
    queue: PathBuf,
    state: AppState,
}

impl Gateway {
    /// Needs a tokio runtime: the state starts the response watcher.
    fn new(env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        let state = AppState::new(config(&queue, env)).unwrap();
        Gateway {
            _dir: dir,
            queue,
            state,
        }
    }

    fn queue(&self) -> PathBuf {
        self.queue.clone()
    }

    /// One request through the router, with a content-length as an HTTP client sends it.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut request = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if !body.is_empty() || method == "POST" {
            request = request.header("content-length", body.len());
        }
        let request = request.body(Body::from(body.to_vec())).unwrap();
        app(self.state.clone()).oneshot(request).await.unwrap()
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        reply(self.send(method, path, headers, body).await).await
    }

    /// A request with the right token.
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.request(method, path, &all, body).await
    }
}

async fn reply(response: Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// Waits (bounded) until `check` holds, letting the runtime's tasks run meanwhile.
async fn eventually(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: not within {bound:?}");
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_and_nothing_is_queued() {
    let gateway = Gateway::new(&[]);
    let host = Host::start(gateway.queue(), echo);
    let none = gateway.request("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].is_string());
    let wrong = gateway
        .request(
            "GET",
            "/api/agents/me",
            &[("authorization", "Bearer nope")],
            b"",
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("content-type"), Some("application/json"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(host.seen().is_empty());
}

#[tokio::test]
async fn answers_pass_through_with_status_headers_and_exact_bytes() {
    let gateway = Gateway::new(&[]);
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let reply_bytes = binary.clone();
    let host = Host::start(gateway.queue(), move |req| {
        Some(response(
            &req.id,
            201,
            &[
                ("etag", "\"v7\""),
                ("location", "/api/issues/i1/comments/c1"),
                ("content-length", "1"),
                ("content-type", "application/octet-stream"),
            ],
            &reply_bytes,
        ))
    });
    let reply = gateway
        .call(
            "POST",
            "/api/issues/i1/comments?draft=1",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                ("x-secret-header", "must not travel"),
                ("if-match", "a"),
                ("if-match", "b"),
            ],
            br#"{"body":"hi"}"#,
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("etag"), Some("\"v7\""));
    assert_eq!(reply.header("location"), Some("/api/issues/i1/comments/c1"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.body, binary);
    // The file's content-length ("1") is not copied: the answer's is its real length.
    assert_eq!(reply.header("content-length"), Some("256"));
    let seen = host.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/issues/i1/comments");
    assert_eq!(request.query, "?draft=1");
    assert_eq!(request.body, r#"{"body":"hi"}"#);
    assert_eq!(request.body_encoding, None);
    let names: Vec<&str> = request.headers.keys().map(String::as_str).collect();
    assert_eq!(names, ["accept", "content-type", "if-match"]);
    assert_eq!(request.headers["if-match"], "a, b");
    // The request file is gone once the caller has its answer.
    assert!(entries(&gateway.queue().join("requests")).is_empty());
    assert!(entries(&gateway.queue().join("responses")).is_empty());
}

#[tokio::test]
async fn non_json_bodies_are_415_but_bodyless_requests_need_no_type() {
    let gateway = Gateway::new(&[]);
    let host = Host::start(gateway.queue(), echo);
    let text = gateway
        .call(
            "POST",
            "/api/issues/i1/comments",
            &[("content-type", "text/plain")],
            b"hi",
        )
        .await;
    assert_eq!(text.status, 415);
    assert!(text.json()["error"].is_string());
    let untyped = gateway
        .call("POST", "/api/issues/i1/comments", &[], b"hi")
        .await;
    assert_eq!(untyped.status, 415);
    let bodyless = gateway
        .call("POST", "/api/issues/i1/checkout", &[], b"")
        .await;
    assert_eq!(
        bodyless.status,
        200,
        "{}",
        String::from_utf8_lossy(&bodyless.body)
    );
    let delete = gateway
        .call("DELETE", "/api/routine-triggers/t1", &[], b"")
        .await;
    assert_eq!(delete.status, 200);
    assert_eq!(host.seen().len(), 2);
}

#[tokio::test]
async fn multipart_goes_base64_only_to_the_attachment_route() {
    let gateway = Gateway::new(&[]);
    let host = Host::start(gateway.queue(), echo);
    let form = b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n\x00\xff\r\n--XyZ--\r\n";
    let ct = [("content-type", "multipart/form-data; boundary=XyZ")];
    let ok = gateway
        .call("POST", "/api/companies/c1/issues/i1/attachments", &ct, form)
        .await;
    assert_eq!(ok.status, 200);
    let seen = host.seen();
    assert_eq!(
        seen[0].body_encoding,
        Some(bridge_protocol::BodyEncoding::Base64)
    );
    assert_eq!(seen[0].body_bytes(1 << 20).unwrap(), form);
    let elsewhere = gateway
        .call("POST", "/api/issues/i1/comments", &ct, form)
        .await;
    assert_eq!(elsewhere.status, 415);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_before_anything_is_written() {
    let gateway = Gateway::new(&[("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "100")]);
    let host = Host::start(gateway.queue(), echo);
    let ct = [("content-type", "application/json")];
    let at_limit = format!("\"{}\"", "a".repeat(98));
    let ok = gateway
        .call("POST", "/api/x", &ct, at_limit.as_bytes())
        .await;
    assert_eq!(ok.status, 200);
    let over = format!("\"{}\"", "a".repeat(99));
    let reply = gateway.call("POST", "/api/x", &ct, over.as_bytes()).await;
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("100"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        host.seen().len(),
        1,
        "only the request at the limit was queued"
    );
}

#[tokio::test]
async fn an_undeclared_body_is_cut_off_at_the_limit_too() {
    let gateway = Gateway::new(&[("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "100")]);
    // No content-length: the body arrives in chunks, and the 101st byte is one too many.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![b' '; 60]), Ok(vec![b' '; 41])];
    let request = Request::builder()
        .method("POST")
        .uri("/api/x")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let reply = reply(app(gateway.state.clone()).oneshot(request).await.unwrap()).await;
    assert_eq!(reply.status, 413);
    assert!(entries(&gateway.queue().join("requests")).is_empty());
}

#[tokio::test]
async fn only_this_gateways_own_requests_count_toward_the_depth() {
    let gateway = Gateway::new(&[("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "1")]);
    // The sandbox forges request files: they use up nothing.
    for i in 0..5 {
        let forged = gateway.queue().join(format!("requests/forged-{i}.json"));
        std::fs::write(forged, b"{}\n").unwrap();
    }
    let waiting = tokio::spawn({
        let gateway = gateway.state.clone();
        let request = Request::get("/api/agents/me")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        async move { app(gateway).oneshot(request).await.unwrap() }
    });
    eventually(
        "the first call to be queued",
        Duration::from_secs(5),
        || entries(&gateway.queue().join("requests")).len() == 6,
    )
    .await;
    let full = gateway.call("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(full.status, 503);
    assert!(full.json()["error"].as_str().unwrap().contains("full"));
    let _host = Host::start(gateway.queue(), echo);
    assert_eq!(waiting.await.unwrap().status(), 200);
    let reply = gateway.call("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_queue_that_cannot_be_written_is_503_and_says_so() {
    let gateway = Gateway::new(&[]);
    // Even root cannot create a file below a regular file.
    let requests = gateway.queue().join("requests");
    std::fs::remove_dir_all(&requests).unwrap();
    std::fs::write(&requests, b"not a directory").unwrap();
    let reply = gateway.call("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "the bridge queue is not writable");
}

#[tokio::test]
async fn unsafe_request_timing_out_is_409_indeterminate_and_withdrawn() {
    let gateway = Gateway::new(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "300")]);
    let ct = [("content-type", "application/json")];
    let reply = gateway
        .call("POST", "/api/issues/i1/comments", &ct, b"{}")
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    let body = reply.json();
    assert_eq!(body["outcome"], "indeterminate");
    assert_eq!(body["retryable"], false);
    assert!(entries(&gateway.queue().join("requests")).is_empty());
}

#[tokio::test]
async fn safe_request_timing_out_is_504() {
    let gateway = Gateway::new(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "300")]);
    let reply = gateway.call("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(reply.status, 504);
    assert!(reply.header("x-paperclip-bridge-outcome").is_none());
    assert!(reply.json()["error"].is_string());
    assert!(entries(&gateway.queue().join("requests")).is_empty());
}

#[tokio::test]
async fn indeterminate_answer_from_the_host_becomes_409() {
    let gateway = Gateway::new(&[]);
    let _host = Host::start(gateway.queue(), |req| {
        Some(response(
            &req.id,
            504,
            &[("x-paperclip-bridge-outcome", "indeterminate")],
            b"{}",
        ))
    });
    let reply = gateway
        .call(
            "PATCH",
            "/api/issues/i1",
            &[("content-type", "application/json")],
            b"{}",
        )
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    assert_eq!(reply.json()["outcome"], "indeterminate");
}

#[tokio::test]
async fn malformed_response_file_is_502() {
    let gateway = Gateway::new(&[]);
    let queue = gateway.queue();
    let _host = Host::start(queue.clone(), move |req| {
        let path = queue.join("responses").join(format!("{}.json", req.id));
        std::fs::write(path, b"{\"id\": broken").unwrap();
        None
    });
    let reply = gateway.call("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(reply.status, 502);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn a_late_answer_is_not_left_behind() {
    let gateway = Gateway::new(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "200")]);
    let host = Host::start(gateway.queue(), |_| None);
    let reply = gateway.call("GET", "/api/agents/me", &[], b"").await;
    assert_eq!(reply.status, 504);
    let id = host.seen()[0].id.clone();
    write_response(&gateway.queue(), &response(&id, 200, &[], b"late"));
    let responses = gateway.queue().join("responses");
    eventually("late response removed", Duration::from_secs(5), || {
        entries(&responses).is_empty()
    })
    .await;
}

#[tokio::test]
async fn an_answer_to_a_request_someone_else_wrote_is_left_for_them() {
    let gateway = Gateway::new(&[]);
    let queue = gateway.queue();
    std::fs::write(queue.join("requests/foreign-1.json"), b"{}\n").unwrap();
    write_response(&queue, &response("foreign-1", 400, &[], b"{}"));
    // Give the watcher (inotify, then the 1 s scan) every chance to act.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(queue.join("responses/foreign-1.json").exists());
}

/// Answers the first request file with 202 and the request's path as the body.
async fn answer_one(queue: PathBuf) -> RequestFile {
    let requests = queue.join("requests");
    loop {
        for entry in std::fs::read_dir(&requests).unwrap().flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(request) = serde_json::from_slice::<RequestFile>(&bytes) else {
                continue;
            };
            let answer = response(&request.id, 202, &[], request.path.as_bytes());
            write_response(&queue, &answer);
            return request;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn start_and_run_serve_one_call_then_stop_on_the_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let settings = [("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "5000")];
    let (listener, state, ready) = bridge_server::start(config(&queue, &settings))
        .await
        .unwrap();
    assert_ne!(ready.port, 0);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bridge_server::run(listener, state, async {
        let _ = stop_rx.await;
    }));
    let host = tokio::spawn(answer_one(queue.clone()));

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", ready.port))
        .await
        .unwrap();
    let head = format!(
        "DELETE /api/issues/i9?x=1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         if-match: \"v1\"\r\nif-match: \"v2\"\r\nx-not-allowlisted: secret\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 202"), "{raw}");
    assert!(raw.ends_with("/api/issues/i9"), "{raw}");

    let request = tokio::time::timeout(Duration::from_secs(5), host)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.method, "DELETE");
    assert_eq!(request.query, "?x=1");
    assert_eq!(request.headers["if-match"], "\"v1\", \"v2\"");
    assert!(!request.headers.contains_key("x-not-allowlisted"));
    assert!(!request.headers.contains_key("authorization"));

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", ready.port))
        .await
        .is_err());
}

#[tokio::test]
async fn run_returns_only_once_every_gateway_task_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    // Grace: min(300 ms, 10 s) + 1 s.
    let settings = [("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "300")];
    let config = config(&dir.path().join("queue"), &settings);
    let (listener, state, ready) = bridge_server::start(config).await.unwrap();
    let watchers = state.live_tasks();
    assert!(watchers >= 1, "the response watcher runs from the start");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bridge_server::run(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    // A caller stuck sending its body: the body read would wait 60 s, far past the grace.
    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", ready.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 10\r\n\r\n{{}}"
    );
    stuck.write_all(head.as_bytes()).await.unwrap();
    eventually("connection served", Duration::from_secs(5), || {
        state.live_tasks() == watchers + 1
    })
    .await;

    let stopping = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(1300),
        "the grace is kept: {took:?}"
    );
    assert_eq!(state.live_tasks(), 0, "a gateway task outlived run");
    // The stuck caller's connection was closed, not left open.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), stuck.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open");
}
