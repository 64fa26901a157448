//! Transports: how the worker takes requests from, and delivers responses to, a queue
//! directory it may only reach through a [`Runner`](crate::runner::Runner).
//!
//! Both directions are batched: one `take` returns every pending request (bounded in
//! bytes) and one `deliver` writes every ready response. `take` also records a claim for
//! each request it returns (`requests/<id>.claimed`, a name queue_v1 peers ignore), so a
//! restarted worker knows which requests may already have been forwarded.

use std::time::Duration;

use crate::runner::BoxFuture;

mod convert;
pub mod helper;
pub mod posix;
pub mod shared_fs;
pub mod stream;

pub use helper::HelperTransport;
pub use posix::PosixTransport;
pub use shared_fs::SharedFsTransport;
pub use stream::StreamTransport;

/// What `take` should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeOptions {
    /// Wait up to this long inside the sandbox for a request to appear (long poll).
    pub wait: Duration,
    /// Stop adding requests to the batch once this many file bytes are in it (a first
    /// request larger than this is still returned, alone, so nothing starves).
    pub max_batch_bytes: usize,
    /// A request file larger than this is returned as [`Incoming::file`] =
    /// `Err(TakeProblem::TooLarge)` without its content.
    pub envelope_limit: usize,
    /// Also return requests that already carry a claim (only at worker start: recovery).
    pub include_claimed: bool,
}

/// A request file taken from the queue. Its content is untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The file-name stem; already checked with `bridge_protocol::layout::is_valid_id`.
    pub id: String,
    /// The raw file bytes, or why they were not read.
    pub file: Result<Vec<u8>, TakeProblem>,
    /// The request was claimed before this take: an earlier worker may have forwarded it.
    pub previously_claimed: bool,
}

/// Why a request file's bytes were not returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeProblem {
    /// The file is larger than the envelope limit.
    TooLarge { size: u64 },
    /// The file vanished or could not be read.
    Unreadable,
}

/// One response file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: String,
    /// The complete response file (JSON line).
    pub file: Vec<u8>,
}

/// What became of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written atomically while the request file (the waiting caller) still existed.
    Delivered,
    /// The request file was gone (the caller gave up): nothing was left behind.
    CallerGone,
}

/// A transport failure: the exec failed or its output made no sense. Requests are not
/// lost by it; the worker retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Runner(#[from] crate::runner::RunnerError),
    #[error("exec timed out after {0:?}")]
    TimedOut(Duration),
    #[error("exec failed (exit {code:?}): {stderr}")]
    Failed { code: Option<i32>, stderr: String },
    #[error("could not read the exec's output: {0}")]
    Garbled(String),
    #[error("{0}")]
    Session(String),
    #[error("local i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs one transport exec: a time-out or a non-zero exit is an error (the worker retries).
pub(crate) async fn checked_exec(
    runner: &dyn crate::runner::Runner,
    exec: crate::runner::Exec,
) -> Result<crate::runner::ExecOutput, TransportError> {
    let timeout = exec.timeout;
    let out = runner.exec(exec).await?;
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

/// The worker's view of one queue directory.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Returns pending requests (claiming each), waiting up to `opts.wait` for the first.
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Incoming>, TransportError>>;

    /// Writes responses, each only while its request file exists, and removes their
    /// claims. Returns one [`Delivery`] per response, in order.
    fn deliver(
        &self,
        responses: Vec<Outgoing>,
    ) -> BoxFuture<'_, Result<Vec<(String, Delivery)>, TransportError>>;

    /// How many execs this transport has made (for benchmarks and budgets).
    fn exec_count(&self) -> u64;

    /// How many `deliver` calls may be under way at once. One for exec-based transports
    /// (answers that become ready meanwhile join the next batch: fewer execs); more where
    /// a call is only a message, so no answer waits for the previous batch's round trip.
    fn concurrent_delivers(&self) -> usize {
        1
    }
}
