//! The one-shot transport: one exec per call, in which the gateway binary, already in the
//! sandbox, does the queue work (`paperclip-bridge-server take` / `put`, lines of
//! [`bridge_protocol::ops`]). `take` waits on inotify inside the sandbox, so a request costs
//! about one exec round trip plus the upstream time. The fallback for runners that cannot
//! stream; the POSIX transport remains for foreign gateways.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::ops::{self, PutResult, MAX_REPLY_ITEMS};

use super::{Deliveries, Execs, PutItem, TakeOptions, Taken, Transport, TransportError};
use crate::runner::{BoxFuture, Exec, ExecOutput, Runner};

pub(crate) const TAKE: &str = r#"set -- take --queue-dir "$Q" --wait-ms "$WAIT_MS" --max-bytes "$MAX_BATCH" --envelope-bytes "$ENVELOPE"
if [ "$INCLUDE_CLAIMED" = 1 ]; then set -- "$@" --include-claimed; fi
exec "$BIN" "$@""#;

pub(crate) const PUT: &str = r#"exec "$BIN" put --queue-dir "$Q""#;

/// The one-shot transport over any [`Runner`].
#[derive(Debug)]
pub struct OneShotTransport {
    execs: Execs,
    queue_dir: PathBuf,
    binary: PathBuf,
}

impl OneShotTransport {
    /// `binary` is the gateway's path inside the sandbox.
    pub fn new(
        runner: Arc<dyn Runner>,
        queue_dir: PathBuf,
        binary: PathBuf,
        exec_timeout: Duration,
    ) -> Self {
        Self {
            execs: Execs::new(runner, exec_timeout),
            queue_dir,
            binary,
        }
    }

    async fn exec(&self, exec: Exec) -> Result<ExecOutput, TransportError> {
        let exec = exec
            .env("Q", self.queue_dir.to_string_lossy())
            .env("BIN", self.binary.to_string_lossy());
        self.execs.run(exec).await
    }
}

impl Transport for OneShotTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>> {
        Box::pin(async move {
            let exec = self
                .execs
                .take(TAKE, &opts)
                .env("WAIT_MS", opts.wait.as_millis().to_string());
            let out = self.exec(exec).await?;
            let lines = lines(&out.stdout);
            if lines.len() > MAX_REPLY_ITEMS {
                return Err(TransportError::Garbled(format!(
                    "take printed more than {MAX_REPLY_ITEMS} lines"
                )));
            }
            let taken: Vec<Taken> = lines
                .iter()
                .filter_map(|line| ops::from_line(line).ok())
                .collect();
            if taken.is_empty() && !lines.is_empty() {
                return Err(TransportError::Garbled(
                    "no valid line in take's output".into(),
                ));
            }
            Ok(taken)
        })
    }

    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_> {
        Box::pin(async move {
            let mut stdin = Vec::new();
            for r in &responses {
                stdin.extend_from_slice(ops::to_line(r).as_bytes());
                stdin.push(b'\n');
            }
            let out = self
                .exec(self.execs.exec(PUT, Duration::ZERO).stdin(stdin))
                .await?;
            let results: Vec<PutResult> = lines(&out.stdout)
                .iter()
                .filter_map(|line| ops::from_line(line).ok())
                .collect();
            if results.is_empty() {
                // Not one answer's failure: the exec said nothing (a lost channel).
                return Err(TransportError::Garbled("put gave no result".into()));
            }
            Ok(super::deliveries(&responses, results))
        })
    }

    fn exec_count(&self) -> u64 {
        self.execs.count()
    }
}

/// The non-blank lines of an exec's output (bounded already: see `runner::exec`).
fn lines(stdout: &[u8]) -> Vec<&[u8]> {
    stdout
        .split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .collect()
}
