//! Transports: how the worker takes requests from, and delivers responses to, a queue
//! directory it may only reach through a [`Runner`].
//!
//! Both directions are batched: one `take` returns every pending request (bounded in
//! bytes) and one `deliver` writes every ready response. `take` also records a claim for
//! each request it returns (`requests/<id>.claimed`, a name queue_v1 peers ignore), so a
//! restarted worker knows which requests may already have been forwarded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::runner::{BoxFuture, Exec, ExecOutput, ExecStream, Runner};

pub use bridge_protocol::ops::{Delivery, PutItem, PutResult, TakeOptions, TakeProblem, Taken};

pub mod oneshot;
pub mod posix;
mod session;
pub mod shared_fs;
pub mod stream;

pub use oneshot::OneShotTransport;
pub use posix::PosixTransport;
pub use shared_fs::SharedFsTransport;
pub use stream::StreamTransport;

/// How the worker reaches the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// The deployed gateway binary does the queue work in one long-lived `session` exec
    /// (takes and puts are messages on it): no exec per request. Needs a runner that can
    /// stream; otherwise the bridge uses [`TransportKind::OneShot`] and says so.
    #[default]
    Stream,
    /// The deployed gateway binary does the queue work (`take`/`put`), woken by inotify:
    /// about one exec per request, and available with every runner.
    OneShot,
    /// POSIX `sh` scripts over the runner's exec: works with any queue_v1 gateway.
    Posix,
    /// Read the queue directory directly (only when the runner shares this file system).
    SharedFs,
}

/// The transport of `kind` for the queue at `queue_dir` (as the sandbox sees it), with
/// `binary` the gateway's path inside the sandbox (the stream and one-shot transports run
/// it) and `exec_timeout` the bound for each exec or reply beyond a take's own wait.
/// `opened` is a session already open (the one-exec start's, its greeting not read
/// yet), which the stream transport adopts as its first; any other kind ends it.
pub fn build(
    kind: TransportKind,
    runner: Arc<dyn Runner>,
    queue_dir: PathBuf,
    binary: PathBuf,
    exec_timeout: Duration,
    opened: Option<ExecStream>,
) -> Arc<dyn Transport> {
    let opened = match (kind, opened) {
        (TransportKind::Stream, opened) => opened,
        (other, Some(mut unused)) => {
            tracing::debug!(kind = ?other, "an opened session is not used: ending it");
            unused.process.kill();
            None
        }
        (_, None) => None,
    };
    match kind {
        TransportKind::Stream => {
            let transport = StreamTransport::new(runner, queue_dir, binary, exec_timeout);
            Arc::new(match opened {
                Some(session) => transport.with_opened(session),
                None => transport,
            })
        }
        TransportKind::OneShot => Arc::new(OneShotTransport::new(
            runner,
            queue_dir,
            binary,
            exec_timeout,
        )),
        TransportKind::Posix => Arc::new(PosixTransport::new(runner, queue_dir, exec_timeout)),
        TransportKind::SharedFs => Arc::new(SharedFsTransport::new(queue_dir)),
    }
}

/// A transport failure: the exec failed or its output made no sense. Requests are not
/// lost by it; the worker retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The runner could not carry out the exec.
    #[error(transparent)]
    Runner(#[from] crate::runner::RunnerError),
    /// An exec, or a session reply or write, took longer than its bound.
    #[error("exec timed out after {0:?}")]
    TimedOut(Duration),
    /// The exec ran and exited non-zero.
    #[error("exec failed (exit {code:?}): {stderr}")]
    Failed {
        /// Its exit code (`None`: killed).
        code: Option<i32>,
        /// What it said on stderr.
        stderr: String,
    },
    /// The sandbox's output was not what the contract says.
    #[error("could not read the exec's output: {0}")]
    Garbled(String),
    /// The session failed to start, ended, or answered with an error.
    #[error("{0}")]
    Session(String),
    /// Local file operations failed (the shared-directory transport).
    #[error("local i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The exec channel of the exec-per-call transports: counts its execs and treats a
/// time-out or a non-zero exit as an error (the worker retries).
#[derive(Debug)]
pub(crate) struct Execs {
    runner: Arc<dyn Runner>,
    /// Bound for each exec beyond a take's own wait.
    timeout: Duration,
    count: AtomicU64,
}

impl Execs {
    pub(crate) fn new(runner: Arc<dyn Runner>, timeout: Duration) -> Self {
        Self {
            runner,
            timeout,
            count: AtomicU64::new(0),
        }
    }

    /// `script`, bounded by the exec timeout plus `wait`.
    pub(crate) fn exec(&self, script: &str, wait: Duration) -> Exec {
        Exec::new(script, wait + self.timeout)
    }

    /// A take script, bounded by its wait plus the exec timeout, with the options both
    /// take scripts read: `MAX_BATCH`, `ENVELOPE`, `INCLUDE_CLAIMED` (0 or 1).
    pub(crate) fn take(&self, script: &str, opts: &TakeOptions) -> Exec {
        self.exec(script, opts.wait)
            .env("MAX_BATCH", opts.max_batch_bytes.to_string())
            .env("ENVELOPE", opts.envelope_limit.to_string())
            .env(
                "INCLUDE_CLAIMED",
                if opts.include_claimed { "1" } else { "0" },
            )
    }

    /// Runs `exec`; a time-out or a non-zero exit is an error.
    pub(crate) async fn run(&self, exec: Exec) -> Result<ExecOutput, TransportError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let timeout = exec.timeout;
        let out = self.runner.exec(exec).await?;
        if out.timed_out {
            return Err(TransportError::TimedOut(timeout));
        }
        if out.code != Some(0) {
            return Err(TransportError::Failed {
                code: out.code,
                stderr: out.stderr_text(),
            });
        }
        Ok(out)
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Pairs each response with its put result; a result missing counts as that answer's
/// failure (the worker retries the failed answers only; a repeated put is harmless).
pub(crate) fn deliveries(
    responses: &[PutItem],
    results: Vec<PutResult>,
) -> Vec<(String, PutOutcome)> {
    responses
        .iter()
        .map(|r| {
            let outcome = match results.iter().find(|p| p.id == r.id) {
                Some(put) => put.result.clone(),
                None => Err("the put gave no result for it".into()),
            };
            (r.id.clone(), outcome)
        })
        .collect()
}

/// What became of one answer: its delivery, or why it failed there (this answer only:
/// a lock held by the sandbox, a directory where its file goes).
pub type PutOutcome = Result<Delivery, String>;

/// What [`Transport::deliver`] returns: each response's id and its outcome; `Err` when the
/// call as a whole failed (the exec channel, a garbled reply).
pub type Deliveries<'a> = BoxFuture<'a, Result<Vec<(String, PutOutcome)>, TransportError>>;

/// The worker's view of one queue directory.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Returns pending requests (claiming each), waiting up to `opts.wait` for the first.
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>>;

    /// Writes responses, each only while its request file exists, and removes their
    /// claims. Returns one [`PutOutcome`] per response, in order: one answer that cannot be
    /// put fails alone, not its batch. The worker never passes
    /// an empty list; an implementation may still spend an exec on one.
    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_>;

    /// How many execs this transport has made (for benchmarks and budgets).
    fn exec_count(&self) -> u64;

    /// How many `deliver` calls may be under way at once. One for exec-based transports
    /// (answers that become ready meanwhile join the next batch: fewer execs); more where
    /// a call is only a message, so no answer waits for the previous batch's round trip.
    fn concurrent_delivers(&self) -> usize {
        1
    }
}
