//! The session RPC client: commands written to one long-lived `session` exec, replies read
//! back and handed to the waiting call by sequence number (wire: [`bridge_protocol::ops`]).
//!
//! It knows nothing of takes ahead or orphans (that is [`super::stream`]'s policy); it
//! guarantees that every call ends (reply, error or time-out), that a take whose caller
//! gives up is cancelled in the sandbox, and that a reply nobody is waiting for any more is
//! handed to the owner's [`Unheard`] hook instead of being lost.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_protocol::ops::{self, Command, CommandLine, Reply, ReplyLine, HELLO};
use bridge_protocol::ops::{reply_line_limit, REPLY_ENVELOPE_BYTES};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::TransportError;
use crate::runner::{ExecStream, Process};

/// Bytes of the session's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Called with a reply whose caller gave up before it arrived.
pub(super) type Unheard = Arc<dyn Fn(Reply) + Send + Sync>;

/// Callers waiting for replies, by sequence number; closed (with why) once the session
/// can no longer answer.
#[derive(Debug)]
enum Waiters {
    Open(HashMap<u64, Waiter>),
    Closed(String),
}

/// One call waiting for its reply, and the longest reply line its command allows.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Reply>,
    limit: usize,
}

impl Waiters {
    /// The longest line the session may send now: the largest any waiting call allows
    /// (a stray line, say an error for an unreadable command, gets the envelope's bytes).
    fn line_limit(&self) -> usize {
        match self {
            Waiters::Open(map) => map.values().map(|w| w.limit).max(),
            Waiters::Closed(_) => None,
        }
        .unwrap_or(REPLY_ENVELOPE_BYTES)
    }
}

/// The session's stdin, shared by calls and cancellations.
type Input = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;
/// Cancellations not written yet: each is written before the next command, so it
/// overtakes nothing.
type PendingCancels = Arc<Mutex<Vec<u64>>>;

/// One open session.
pub(super) struct Session {
    input: Input,
    cancels: PendingCancels,
    /// Bound for writing one command (a session that stops reading fills the pipe).
    write_bound: Duration,
    waiters: Arc<Mutex<Waiters>>,
    next_seq: AtomicU64,
    unheard: Unheard,
    process: Mutex<Box<dyn Process>>,
    tasks: Vec<AbortHandle>,
}

impl Session {
    /// Waits (bounded) for the session's greeting, then starts routing its replies.
    pub(super) async fn open(
        stream: ExecStream,
        bound: Duration,
        unheard: Unheard,
    ) -> Result<Self, TransportError> {
        let ExecStream {
            stdin,
            stdout,
            stderr,
            mut process,
        } = stream;
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let stderr_task = tokio::spawn(keep_tail(stderr, stderr_tail.clone()));
        let mut stdout = BufReader::new(stdout);
        let hello = read_line(&mut stdout, &|| HELLO.len());
        let hello = tokio::time::timeout(bound, hello).await;
        if !matches!(&hello, Ok(Ok(Some(line))) if line == HELLO.as_bytes()) {
            process.kill();
            // Let the stderr reader catch what the session said before it died.
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            let said = tail_text(&stderr_tail);
            return Err(TransportError::Session(match hello {
                Err(_) => format!("the session did not start within {bound:?}: {said}"),
                _ => format!("the session did not start: {said}"),
            }));
        }
        let waiters = Arc::new(Mutex::new(Waiters::Open(HashMap::new())));
        let reader = tokio::spawn(route_replies(
            stdout,
            waiters.clone(),
            unheard.clone(),
            stderr_tail,
        ));
        Ok(Self {
            input: Arc::new(tokio::sync::Mutex::new(stdin)),
            cancels: PendingCancels::default(),
            write_bound: bound,
            waiters,
            next_seq: AtomicU64::new(1),
            unheard,
            process: Mutex::new(process),
            tasks: vec![reader.abort_handle(), stderr_task.abort_handle()],
        })
    }

    pub(super) fn is_open(&self) -> bool {
        matches!(*self.lock_waiters(), Waiters::Open(_))
    }

    /// Writes `command`; the reply is awaited with [`Sent::wait`].
    pub(super) async fn send(
        session: &Arc<Session>,
        command: Command,
    ) -> Result<Sent, TransportError> {
        let seq = session.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // Registered before the command is written, so the reader allows for its reply
        // before the reply's first byte can arrive.
        let waiter = Waiter {
            reply: tx,
            limit: reply_line_limit(&command),
        };
        match &mut *session.lock_waiters() {
            Waiters::Open(map) => map.insert(seq, waiter),
            Waiters::Closed(why) => return Err(TransportError::Session(why.clone())),
        };
        // A take given up on (a stopping worker drops it) must not keep the session's
        // watch busy for the rest of its wait.
        let cancel = matches!(command, Command::Take(_)).then(|| CancelOnDrop {
            seq,
            input: session.input.clone(),
            pending: session.cancels.clone(),
            bound: session.write_bound,
        });
        let sent = Sent {
            session: session.clone(),
            reply: ReplySlot {
                rx,
                unheard: session.unheard.clone(),
            },
            cancel,
        };
        let mut line = ops::to_line(&CommandLine { seq, command });
        line.push('\n');
        let written = write_command(&session.input, &session.cancels, &line);
        match tokio::time::timeout(session.write_bound, written).await {
            Ok(Ok(())) => Ok(sent),
            Ok(Err(e)) => Err(TransportError::Session(
                session.why_closed().unwrap_or(e.to_string()),
            )),
            Err(_) => Err(TransportError::TimedOut(session.write_bound)),
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn why_closed(&self) -> Option<String> {
        match &*self.lock_waiters() {
            Waiters::Closed(why) => Some(why.clone()),
            Waiters::Open(_) => None,
        }
    }

    /// Ends the session: every waiting call fails, the process is killed.
    pub(super) fn kill(&self, why: &str) {
        close(&self.waiters, why.to_owned());
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(mut process) = self.process.lock() {
            process.kill();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    /// Releases what the session owns: its process and its reader tasks.
    fn drop(&mut self) {
        self.kill("the transport is gone");
    }
}

/// A command written to a session, its reply still to come.
pub(super) struct Sent {
    session: Arc<Session>,
    reply: ReplySlot,
    cancel: Option<CancelOnDrop>,
}

impl Sent {
    /// The session this command went to.
    pub(super) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Waits up to `bound` for the reply.
    pub(super) async fn wait(mut self, bound: Duration) -> Result<Reply, TransportError> {
        let outcome = tokio::time::timeout(bound, &mut self.reply.rx).await;
        if let Some(cancel) = self.cancel.as_mut() {
            cancel.seq = 0; // answered, or the session is about to be killed: nothing to cancel
        }
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(TransportError::Session(
                self.session
                    .why_closed()
                    .unwrap_or_else(|| "the session ended before it replied".into()),
            )),
            Err(_) => Err(TransportError::TimedOut(bound)),
        }
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent").finish_non_exhaustive()
    }
}

/// Where a reply arrives.
struct ReplySlot {
    rx: oneshot::Receiver<Reply>,
    unheard: Unheard,
}

impl Drop for ReplySlot {
    /// A reply can land in the slot just as its caller gives up (drops the call): the
    /// slot owns that reply, so it hands it on rather than losing claimed requests.
    fn drop(&mut self) {
        if let Ok(reply) = self.rx.try_recv() {
            (self.unheard)(reply);
        }
    }
}

/// Writes the pending cancellations, then `line` (may be empty).
async fn write_command(input: &Input, pending: &PendingCancels, line: &str) -> io::Result<()> {
    let mut input = input.lock().await;
    let cancels: Vec<u64> = pending
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for take in cancels {
        let cancel = CommandLine {
            seq: 0,
            command: Command::Cancel(take),
        };
        input
            .write_all(format!("{}\n", ops::to_line(&cancel)).as_bytes())
            .await?;
    }
    input.write_all(line.as_bytes()).await?;
    input.flush().await
}

/// Cancels take `seq` in the session when its call is dropped unanswered (`seq` 0: no).
struct CancelOnDrop {
    seq: u64,
    input: Input,
    pending: PendingCancels,
    bound: Duration,
}

impl Drop for CancelOnDrop {
    /// A caller gives up on a take by dropping its future, and only `Drop` learns of it:
    /// the cancellation is queued, and written now if the session's stdin is free (else
    /// ahead of the next command), bounded like every write.
    fn drop(&mut self) {
        if self.seq == 0 {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.push(self.seq);
        }
        let (input, pending, bound) = (self.input.clone(), self.pending.clone(), self.bound);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(tokio::time::timeout(bound, async move {
                write_command(&input, &pending, "").await
            }));
        }
    }
}

/// Hands each reply to its waiting call; closes the waiters when the stream ends or
/// carries something unreadable.
async fn route_replies<R: AsyncBufRead + Unpin>(
    mut stdout: R,
    waiters: Arc<Mutex<Waiters>>,
    unheard: Unheard,
    stderr_tail: Arc<Mutex<String>>,
) {
    let limit = || {
        waiters
            .lock()
            .map_or(REPLY_ENVELOPE_BYTES, |w| w.line_limit())
    };
    let why = loop {
        let line = match read_line(&mut stdout, &limit).await {
            Ok(Some(line)) => line,
            Ok(None) => break "the session ended".to_owned(),
            Err(e) => break format!("reading the session failed: {e}"),
        };
        let ReplyLine { seq, reply } = match ops::from_line(&line) {
            Ok(parsed) => parsed,
            Err(e) => break format!("the session sent an unreadable line: {e}"),
        };
        let waiter = match waiters.lock().as_deref_mut() {
            Ok(Waiters::Open(map)) => map.remove(&seq),
            _ => None,
        };
        match waiter {
            // Read under the largest waiting bound; this command's own may be smaller.
            Some(waiter) if line.len() > waiter.limit => {
                break format!(
                    "a reply of {} bytes, over its {} byte bound",
                    line.len(),
                    waiter.limit
                );
            }
            Some(waiter) => {
                if let Err(reply) = waiter.reply.send(reply) {
                    unheard(reply);
                }
            }
            // Never asked for, or answered twice: not the host's to act on.
            None => tracing::warn!(seq, "the session replied to no pending command"),
        }
    };
    // Give a dying session's last words a moment to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let said = tail_text(&stderr_tail);
    close(
        &waiters,
        if said.is_empty() {
            why
        } else {
            format!("{why}: {said}")
        },
    );
}

fn close(waiters: &Mutex<Waiters>, why: String) {
    if let Ok(mut waiters) = waiters.lock() {
        if matches!(*waiters, Waiters::Open(_)) {
            *waiters = Waiters::Closed(why);
        }
    }
}

/// One line without its newline; `None` at the end. Longer than `limit()` (asked as the
/// line grows: a command sent meanwhile may allow more) is an error, found before more
/// than one buffer beyond the limit is held.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: &(dyn Fn() -> usize + Send + Sync),
) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (end, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (end, true),
            None => (buf.len(), false),
        };
        let limit = limit();
        if line.len() + end > limit {
            return Err(io::Error::other(format!(
                "a line longer than {limit} bytes"
            )));
        }
        line.extend_from_slice(&buf[..end]);
        reader.consume(end + usize::from(found));
        if found {
            return Ok(Some(line));
        }
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes of `stderr`.
async fn keep_tail(mut stderr: Pin<Box<dyn AsyncRead + Send>>, tail: Arc<Mutex<String>>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            return;
        }
        if let Ok(mut tail) = tail.lock() {
            tail.push_str(&String::from_utf8_lossy(&buf[..n]));
            if tail.len() > STDERR_TAIL {
                let cut = tail.len() - STDERR_TAIL;
                let cut = (cut..tail.len())
                    .find(|&i| tail.is_char_boundary(i))
                    .unwrap_or(0);
                tail.drain(..cut);
            }
        }
    }
}

fn tail_text(tail: &Mutex<String>) -> String {
    tail.lock().map(|t| t.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let ten = || 10;
        let mut input: &[u8] = b"ab\ncdef\ngh";
        assert_eq!(
            read_line(&mut input, &ten).await.unwrap(),
            Some(b"ab".to_vec())
        );
        assert_eq!(
            read_line(&mut input, &ten).await.unwrap(),
            Some(b"cdef".to_vec())
        );
        assert_eq!(
            read_line(&mut input, &ten).await.unwrap(),
            Some(b"gh".to_vec())
        );
        assert_eq!(read_line(&mut input, &ten).await.unwrap(), None);
        let mut long: &[u8] = &[b'x'; 100];
        let mut long = BufReader::with_capacity(8, &mut long);
        assert!(read_line(&mut long, &ten).await.is_err());
        // Exactly at the limit is fine; one more byte is not.
        let mut exact: &[u8] = b"0123456789\n01234567890\n";
        assert!(read_line(&mut exact, &ten).await.unwrap().is_some());
        assert!(read_line(&mut exact, &ten).await.is_err());
    }
}
