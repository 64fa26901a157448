//! The audit log: one JSON line per decision (never a body, never a secret).

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Serialize, Serializer};

use crate::worker::Decision;

/// Characters of one untrusted field (id, method, path: they come from the sandbox) a
/// record keeps; the rest is cut, saying how much. JSON escapes every control character
/// (at most six bytes each), so a record stays under 4 KiB whatever the request file says.
pub const AUDIT_FIELD_CHARS: usize = 200;

/// An append-only JSON-lines file, shared by the worker's tasks.
#[derive(Debug, Clone)]
pub struct AuditLog {
    file: Arc<Mutex<std::fs::File>>,
}

/// One decision.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// When the answer was written (ISO 8601, UTC).
    pub time: String,
    /// The request's id (its queue file's name).
    #[serde(serialize_with = "clipped")]
    pub id: &'a str,
    /// The method as the request file gave it (`-` if unreadable).
    #[serde(serialize_with = "clipped")]
    pub method: &'a str,
    /// The path as the request file gave it (`-` if unreadable).
    #[serde(serialize_with = "clipped")]
    pub path: &'a str,
    /// What was decided, written lower-case (`forwarded`, `denied`, ...).
    pub decision: Decision,
    /// The status the agent's answer carries.
    pub status: u16,
    /// The upstream's status, when the request was forwarded and answered.
    pub upstream_status: Option<u16>,
    /// From taking the request to writing its answer.
    pub latency_ms: f64,
}

impl AuditLog {
    /// Opens (creating, appending) the file, owner-only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends one record; a failing audit write is logged, not fatal.
    pub fn record(&self, record: &AuditRecord<'_>) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let written = self.file.lock().map(|mut f| f.write_all(&line));
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("could not write the audit log");
        }
    }
}

/// At most [`AUDIT_FIELD_CHARS`] characters of an untrusted field.
fn clipped<S: Serializer>(text: &&str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&bridge_protocol::shown::clipped(text, AUDIT_FIELD_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_in_a_fixed_field_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for (decision, upstream_status) in
            [(Decision::Forwarded, Some(201)), (Decision::Stopping, None)]
        {
            log.record(&AuditRecord {
                time: "2024-01-02T03:04:05.678Z".into(),
                id: "r1",
                method: "POST",
                path: "/api/issues/i1/comments",
                decision,
                status: 201,
                upstream_status,
                latency_ms: 1.5,
            });
        }
        let expected = concat!(
            r#"{"time":"2024-01-02T03:04:05.678Z","id":"r1","method":"POST","path":"/api/issues/i1/comments","decision":"forwarded","status":201,"upstream_status":201,"latency_ms":1.5}"#,
            "\n",
            r#"{"time":"2024-01-02T03:04:05.678Z","id":"r1","method":"POST","path":"/api/issues/i1/comments","decision":"stopping","status":201,"upstream_status":null,"latency_ms":1.5}"#,
            "\n",
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    #[test]
    fn a_forged_huge_path_adds_a_bounded_escaped_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let huge = "\u{1b}\r\n/api".repeat(4 << 20); // 20 MiB of forged lines and escapes
        let method = "\n".repeat(1 << 20);
        log.record(&AuditRecord {
            time: "2024-01-02T03:04:05.678Z".into(),
            id: "r1",
            method: &method,
            path: &huge,
            decision: Decision::Invalid,
            status: 400,
            upstream_status: None,
            latency_ms: 1.5,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 4096, "{} bytes", text.len());
        assert_eq!(text.lines().count(), 1);
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(record["path"].as_str().unwrap().ends_with("more bytes)"));
    }
}
