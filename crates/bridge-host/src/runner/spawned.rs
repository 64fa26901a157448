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
        let out = async { tokio::io::copy(&mut stdout, &mut tokio::io::stdout()).await };
        let err = async { tokio::io::copy(&mut stderr, &mut tokio::io::stderr()).await };
        let _ = tokio::join!(out, err);
    });
    Box::new(Forwarded { process, copies })
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
