//! An agent started with [`Runner::spawn`](super::Runner::spawn): a stream with an empty
//! stdin whose stdout and stderr are copied to ours as they come.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinHandle;

use super::{BoxFuture, ExecStream, ExitStatus, Process, RunnerError, Signal};

/// After the process ends, how long its output may take to drain (a background
/// grandchild may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Closes the stream's stdin and forwards its output to this process's.
pub(super) fn forward_output(stream: ExecStream) -> Box<dyn Process> {
    let ExecStream {
        mut stdin,
        mut stdout,
        mut stderr,
        process,
    } = stream;
    let copies = tokio::spawn(async move {
        let _ = stdin.shutdown().await;
        drop(stdin);
        let out = forward(&mut stdout, tokio::io::stdout());
        let err = forward(&mut stderr, tokio::io::stderr());
        tokio::join!(out, err);
    });
    Box::new(Forwarded { process, copies })
}

/// Copies `from` to `to`; if `to` fails (our stdout was closed), drains the rest, so the
/// agent never blocks on a full pipe nobody reads.
async fn forward<R, W>(from: &mut R, mut to: W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    if tokio::io::copy(from, &mut to).await.is_err() {
        let _ = tokio::io::copy(from, &mut tokio::io::sink()).await;
    }
}

/// The stream's process, plus the task copying its output.
#[derive(Debug)]
struct Forwarded {
    process: Box<dyn Process>,
    copies: JoinHandle<()>,
}

impl Process for Forwarded {
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus, RunnerError>> {
        Box::pin(async move {
            let status = self.process.wait().await?;
            // What the agent printed last is shown before its status is acted on.
            let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut self.copies).await;
            Ok(status)
        })
    }

    fn signal(&mut self, signal: Signal) -> Result<(), RunnerError> {
        self.process.signal(signal)
    }
}

impl Drop for Forwarded {
    /// Releases the copying task (the process kills itself when dropped).
    fn drop(&mut self) {
        self.copies.abort();
    }
}
