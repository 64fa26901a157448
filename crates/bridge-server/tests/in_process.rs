//! The library API in process: `start` + `run` on port 0, one answered call, and a
//! shutdown future that stops the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use bridge_protocol::env::GatewayConfig;
use bridge_protocol::wire::{self, RequestFile, ResponseFile};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "in-process-token-abcdefghijklmnop";

fn config(queue: &std::path::Path) -> GatewayConfig {
    let vars: HashMap<&str, String> = [
        ("PAPERCLIP_BRIDGE_QUEUE_DIR", queue.display().to_string()),
        ("PAPERCLIP_BRIDGE_TOKEN", TOKEN.to_owned()),
        ("PAPERCLIP_BRIDGE_PORT", "0".to_owned()),
        ("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "5000".to_owned()),
    ]
    .into();
    GatewayConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

/// Answers the first request file with 202 and the request's path as the body.
async fn answer_one(queue: std::path::PathBuf) -> RequestFile {
    let requests = queue.join("requests");
    loop {
        for entry in std::fs::read_dir(&requests).unwrap().flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(request) = serde_json::from_slice::<RequestFile>(&bytes) else {
                continue;
            };
            let response = ResponseFile::new(
                &request.id,
                202,
                Default::default(),
                request.path.as_bytes(),
                "2026-11-28T00:00:00.000Z".into(),
            );
            let path = queue.join("responses").join(format!("{}.json", request.id));
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, wire::to_line(&response)).unwrap();
            std::fs::rename(tmp, path).unwrap();
            return request;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn start_and_run_serve_one_call_then_stop_on_the_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let (listener, state, ready) = bridge_server::start(config(&queue)).await.unwrap();
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
