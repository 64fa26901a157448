//! The audit log: one JSON line per decision (never a body, never a secret).

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// An append-only JSON-lines file, shared by the worker's tasks.
#[derive(Debug, Clone)]
pub struct AuditLog {
    file: Arc<Mutex<std::fs::File>>,
}

/// One decision.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// `forwarded`, `denied`, `invalid`, `indeterminate`, `failed` or `stopping`.
    pub decision: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
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
