//! The audit log: one JSON line per decision (never a body, never a secret).

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::worker::Decision;

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
    pub id: &'a str,
    /// The method as the request file gave it (`-` if unreadable).
    pub method: &'a str,
    /// The path as the request file gave it (`-` if unreadable).
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
}
