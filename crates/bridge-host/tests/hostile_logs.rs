//! What the sandbox writes never forges or floods the host's logs: the real
//! `paperclip-bridge worker --shared-fs` binary, fed forged request files (CR, LF and ESC
//! in the method and path, a 20 MiB path), keeps every stderr line and audit record its
//! own and bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A log line or audit record may not grow past this, whatever a request file holds.
const LINE_BOUND: usize = 4096;

/// A queue_v1 request file with `method` and `path` JSON-escaped (they hold anything).
fn forged(id: &str, method: &str, path: &str) -> String {
    serde_json::json!({
        "id": id, "method": method, "path": path, "query": "", "headers": {},
        "body": "", "createdAt": "2026-11-28T16:00:00.000Z",
    })
    .to_string()
}

#[test]
fn forged_methods_and_paths_cannot_forge_or_flood_log_lines() {
    let queue = queue_dir();
    let dir = tempfile::tempdir().unwrap();
    let (stderr_file, audit) = (dir.path().join("stderr"), dir.path().join("audit.jsonl"));
    let fake = "2026-01-01T00:00:00.000000Z  INFO FORGED";
    write_request(
        queue.path(),
        "r1",
        &forged("r1", &format!("GET\r\n{fake} method"), "/api/agents/me"),
    );
    write_request(
        queue.path(),
        "r2",
        &forged("r2", "GET", &format!("/api/x\n{fake} path\x1b[2K\r")),
    );
    let unit = format!("a\r\n{fake} huge ");
    let huge = format!("/api/{}", unit.repeat((20 << 20) / unit.len() + 1));
    assert!(huge.len() >= 20 << 20);
    write_request(queue.path(), "r3", &forged("r3", "POST", &huge));

    let mut worker = Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_API_URL", "http://127.0.0.1:9")
        .env("PAPERCLIP_API_KEY", REAL_KEY)
        .env("RUST_LOG", "info")
        .args(["worker", "--shared-fs", "--queue-dir"])
        .arg(queue.path())
        .arg("--audit-log")
        .arg(&audit)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .unwrap();
    for id in ["r1", "r2", "r3"] {
        assert_eq!(
            wait_response(queue.path(), id, Duration::from_secs(30)).status,
            400
        );
    }
    // The answers are written after their lines are logged and audited.
    std::thread::sleep(Duration::from_millis(200));
    let _ = worker.kill();
    let _ = worker.wait();

    let stderr = std::fs::read(&stderr_file).unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(!stderr.contains('\x1b'), "a raw ESC reached stderr");
    for line in stderr.lines() {
        assert!(line.len() <= LINE_BOUND, "a {} byte log line", line.len());
        assert!(
            !line.contains("FORGED") || line.contains("answered"),
            "a forged line on stderr: {line:?}"
        );
    }
    assert!(
        stderr.len() <= 4 * LINE_BOUND,
        "{} bytes of stderr",
        stderr.len()
    );
    let records = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(records.lines().count(), 3, "one record per request");
    for line in records.lines() {
        assert!(
            line.len() <= LINE_BOUND,
            "a {} byte audit record",
            line.len()
        );
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["decision"], "invalid");
    }
}
