//! The upstream misbehaving, as a real HTTP server can: no answer, a reset after the
//! request, a truncated body, 5xx, a redirect. Each maps to what the agent can act on
//! (504 for a safe method, the indeterminate outcome for an unsafe one, the status passed
//! through), and nothing is sent twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_host::policy::HostPolicy;
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::transport::SharedFsTransport;
use bridge_host::worker::{Worker, WorkerConfig};
use bridge_protocol::{OUTCOME_HEADER, OUTCOME_INDETERMINATE};
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long the worker waits for the upstream before giving up.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(800);

/// A raw HTTP server whose behaviour is chosen by the issue id in the request path
/// (`/api/issues/<behaviour>-<n>/comments`); it records every request head it reads.
#[derive(Clone, Default)]
struct Faulty {
    heads: Arc<Mutex<Vec<String>>>,
}

impl Faulty {
    async fn start() -> (Faulty, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let faulty = Faulty::default();
        let serving = faulty.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serving.clone().serve(stream));
            }
        });
        (faulty, url)
    }

    async fn serve(self, mut stream: tokio::net::TcpStream) {
        let head = read_head(&mut stream).await;
        self.heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let issue = path.split('/').nth(3).unwrap_or("");
        let answer: &[u8] = match issue.split('-').next().unwrap_or("") {
            "stall" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            "reset" => return,
            "truncated" => b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\":",
            "unavailable" => b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 7\r\ncontent-length: 14\r\nconnection: close\r\n\r\n{\"error\":\"db\"}",
            "moved" => b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        };
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    }

    /// How many requests reached the server for each path.
    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for head in self.heads.lock().unwrap().iter() {
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            *counts.entry(path).or_insert(0) += 1;
        }
        counts
    }
}

/// The request head (up to the blank line), lower-cased; the body is not needed.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test]
async fn each_upstream_fault_maps_to_an_answer_the_agent_can_act_on() {
    let (faulty, url) = Faulty::start().await;
    let dir = queue_dir();
    let upstream = Upstream::new(&url, Secret::new(REAL_KEY.into()), None, UPSTREAM_TIMEOUT);
    let config = WorkerConfig {
        take_wait: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let worker = Worker::spawn(
        Arc::new(SharedFsTransport::new(dir.path().to_path_buf())),
        upstream.unwrap(),
        Arc::new(HostPolicy::default()),
        config,
    );
    // (id, method, the upstream's behaviour, expected status, indeterminate?)
    let cases = [
        ("g1", "GET", "stall", 504, false),
        ("p1", "POST", "stall", 504, true),
        ("g2", "GET", "reset", 504, false),
        ("p2", "POST", "reset", 504, true),
        ("g3", "GET", "truncated", 504, false),
        ("p3", "POST", "truncated", 504, true),
        ("g4", "GET", "unavailable", 503, false),
        ("p4", "POST", "unavailable", 503, false),
        ("g5", "GET", "moved", 302, false),
    ];
    let path_of = |id: &str, last: &str| format!("/api/issues/{last}-{id}/comments");
    for (id, method, last, _, _) in cases {
        let path = path_of(id, last);
        let headers = r#"{"idempotency-key":"key-123"}"#;
        let body = if method == "GET" { r#""""# } else { r#""{}""# };
        write_request(
            dir.path(),
            id,
            &request_json(id, method, &path, headers, body),
        );
    }
    let mut wrong = Vec::new();
    for (id, method, last, status, indeterminate) in cases {
        let answer = response(dir.path(), id).await;
        let outcome = answer.headers.get(OUTCOME_HEADER).map(String::as_str);
        let said_indeterminate = outcome == Some(OUTCOME_INDETERMINATE);
        if answer.status != status || said_indeterminate != indeterminate {
            wrong.push(format!(
                "{method} {last}: {} (outcome {outcome:?}), not {status} (indeterminate: {indeterminate})",
                answer.status
            ));
        }
        if last == "unavailable"
            && answer.headers.get("retry-after").map(String::as_str) != Some("7")
        {
            wrong.push(format!("{method} {last}: retry-after not passed through"));
        }
        if last == "moved" && !answer.headers.contains_key("location") {
            wrong.push(format!("{method} {last}: location not passed through"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Sent once each (no retry of anything that may have been applied; no redirect
    // followed), with the agent's idempotency key.
    let counts = faulty.counts();
    for (id, _, last, _, _) in cases {
        let path = path_of(id, last);
        assert_eq!(counts.get(&path), Some(&1), "{path}: {counts:?}");
    }
    assert_eq!(counts.len(), cases.len(), "{counts:?}");
    let heads = faulty.heads.lock().unwrap().clone();
    for head in &heads {
        assert!(head.contains("idempotency-key: key-123"), "{head}");
    }
    worker.stop().await;
}
