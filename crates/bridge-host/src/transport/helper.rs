//! The helper transport: the gateway binary, already in the sandbox, does the queue work
//! (`paperclip-bridge-server take` / `put`). `take` waits on inotify inside the sandbox, so
//! a request costs about one exec round trip plus the upstream time. Used automatically
//! when the gateway is ours; the POSIX transport remains for foreign gateways.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bridge_server::helper;

use super::{convert, Delivery, Incoming, Outgoing, TakeOptions, Transport, TransportError};
use crate::runner::{BoxFuture, Exec, ExecOutput, Runner};

const TAKE: &str = r#"set -- take --queue-dir "$Q" --wait-ms "$WAIT_MS" --max-bytes "$MAX_BATCH" --envelope-bytes "$ENVELOPE"
if [ "$INCLUDE_CLAIMED" = 1 ]; then set -- "$@" --include-claimed; fi
exec "$BIN" "$@""#;

const PUT: &str = r#"exec "$BIN" put --queue-dir "$Q""#;

/// The helper transport over any [`Runner`].
#[derive(Debug)]
pub struct HelperTransport {
    runner: Arc<dyn Runner>,
    queue_dir: PathBuf,
    binary: PathBuf,
    exec_timeout: Duration,
    execs: AtomicU64,
}

impl HelperTransport {
    /// `binary` is the gateway's path inside the sandbox.
    pub fn new(
        runner: Arc<dyn Runner>,
        queue_dir: PathBuf,
        binary: PathBuf,
        exec_timeout: Duration,
    ) -> Self {
        Self {
            runner,
            queue_dir,
            binary,
            exec_timeout,
            execs: AtomicU64::new(0),
        }
    }

    async fn exec(&self, exec: Exec) -> Result<ExecOutput, TransportError> {
        self.execs.fetch_add(1, Ordering::Relaxed);
        let exec = exec
            .env("Q", self.queue_dir.to_string_lossy())
            .env("BIN", self.binary.to_string_lossy());
        super::checked_exec(self.runner.as_ref(), exec).await
    }
}

impl Transport for HelperTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Incoming>, TransportError>> {
        Box::pin(async move {
            let exec = Exec::new(TAKE, opts.wait + self.exec_timeout)
                .env("WAIT_MS", opts.wait.as_millis().to_string())
                .env("MAX_BATCH", opts.max_batch_bytes.to_string())
                .env("ENVELOPE", opts.envelope_limit.to_string())
                .env(
                    "INCLUDE_CLAIMED",
                    if opts.include_claimed { "1" } else { "0" },
                );
            let out = self.exec(exec).await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let taken: Vec<Incoming> = lines
                .iter()
                .filter_map(|line| helper::parse_taken(line))
                .map(convert::incoming)
                .collect();
            if taken.is_empty() && !lines.is_empty() {
                return Err(TransportError::Garbled(
                    "no valid line in take's output".into(),
                ));
            }
            Ok(taken)
        })
    }

    fn deliver(
        &self,
        responses: Vec<Outgoing>,
    ) -> BoxFuture<'_, Result<Vec<(String, Delivery)>, TransportError>> {
        Box::pin(async move {
            if responses.is_empty() {
                return Ok(Vec::new());
            }
            let mut stdin = Vec::new();
            for r in &responses {
                let line = serde_json::json!({ "id": r.id, "file": STANDARD.encode(&r.file) });
                stdin.extend_from_slice(line.to_string().as_bytes());
                stdin.push(b'\n');
            }
            let out = self
                .exec(Exec::new(PUT, self.exec_timeout).stdin(stdin))
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let results: Vec<_> = text.lines().filter_map(helper::parse_put_result).collect();
            convert::deliveries(&responses, results)
        })
    }

    fn exec_count(&self) -> u64 {
        self.execs.load(Ordering::Relaxed)
    }
}
