//! The streaming helper transport: one long-lived `paperclip-bridge-server session` exec
//! carries every take and put as a message (wire: `bridge_server::helper::session`), so
//! once the session is open a request costs no exec, only about one stream round trip
//! plus the upstream's time.
//!
//! A session that ends, hangs past its bound or says something unreadable is killed, the
//! call fails like a failed exec, and the next call opens a new session. The worker's
//! retry and recovery rules cover whatever was lost with it, exactly as for lost execs.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_server::helper::session::{self, Command, Reply};
use bridge_server::helper::Taken;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::io::{AsyncReadExt as _, BufReader};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::{convert, Delivery, Incoming, Outgoing, TakeOptions, Transport, TransportError};
use crate::runner::{BoxFuture, ExecStream, Runner, Spawn};

const SESSION: &str = r#"exec "$BIN" session --queue-dir "$Q""#;

/// Longest reply line accepted from the (untrusted) session. A take reply is bounded by
/// the batch and envelope limits (in base64), far below this.
const MAX_REPLY_LINE: usize = 256 * 1024 * 1024;
/// Long polls kept waiting in the session beyond the one being answered.
const POLLS_AHEAD: usize = 2;
/// Put commands under way at once on one session.
const CONCURRENT_PUTS: usize = 4;
/// Bytes of the session's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

/// The streaming helper transport over any runner that can stream.
#[derive(Debug)]
pub struct StreamTransport {
    runner: Arc<dyn Runner>,
    queue_dir: PathBuf,
    binary: PathBuf,
    /// Bound for opening a session and for each reply (beyond a take's own wait).
    reply_timeout: Duration,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Requests a take claimed after its caller gave up on it: the next take returns them.
    orphans: Orphans,
    /// Long polls sent ahead ([`POLLS_AHEAD`]): while one reply travels to the host and the
    /// worker handles it, the next poll already waits in the session, so a request never
    /// waits for a take to arrive.
    ahead: tokio::sync::Mutex<VecDeque<(TakeOptions, Sent)>>,
    opened: AtomicU64,
}

/// Taken requests whose take call was dropped before the reply came.
type Orphans = Arc<Mutex<Vec<Taken>>>;

impl StreamTransport {
    /// `binary` is the gateway's path inside the sandbox.
    pub fn new(
        runner: Arc<dyn Runner>,
        queue_dir: PathBuf,
        binary: PathBuf,
        reply_timeout: Duration,
    ) -> Self {
        Self {
            runner,
            queue_dir,
            binary,
            reply_timeout,
            current: tokio::sync::Mutex::new(None),
            orphans: Orphans::default(),
            ahead: tokio::sync::Mutex::new(VecDeque::new()),
            opened: AtomicU64::new(0),
        }
    }

    /// Sends `command` and waits (at most `extra_wait` + the reply bound) for its reply.
    async fn call(&self, command: Command, extra_wait: Duration) -> Result<Reply, TransportError> {
        let sent = self.send(command).await?;
        self.finish(sent, extra_wait + self.reply_timeout).await
    }

    /// Sends `command` on the open (or a new) session.
    async fn send(&self, command: Command) -> Result<Sent, TransportError> {
        let session = self.session().await?;
        let sent = Session::send(&session, command, &self.orphans).await;
        if sent.is_err() {
            self.discard(&session).await;
        }
        sent
    }

    /// Waits up to `bound` for the reply to `sent`; a session that fails is discarded.
    async fn finish(&self, sent: Sent, bound: Duration) -> Result<Reply, TransportError> {
        let session = sent.session.clone();
        let result = sent.wait(bound).await;
        if result.is_err() {
            self.discard(&session).await;
        }
        match result? {
            Reply::Error(why) => Err(TransportError::Session(format!("the helper said: {why}"))),
            reply => Ok(reply),
        }
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_open()) {
            return Ok(session.clone());
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        let spawn = Spawn {
            script: SESSION.into(),
            env: vec![
                ("Q".into(), self.queue_dir.to_string_lossy().into_owned()),
                ("BIN".into(), self.binary.to_string_lossy().into_owned()),
            ],
            cwd: None,
            inherit_output: false,
        };
        let stream = self.runner.stream(spawn).await?;
        let session =
            Arc::new(Session::open(stream, self.reply_timeout, self.orphans.clone()).await?);
        tracing::debug!("helper session open");
        *current = Some(session.clone());
        Ok(session)
    }

    /// Kills `session` and forgets it, unless another call already replaced it.
    async fn discard(&self, session: &Arc<Session>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            *current = None;
        }
        session.kill("discarded after a failed call");
    }
}

impl Transport for StreamTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Incoming>, TransportError>> {
        Box::pin(async move {
            let command = || Command::Take(convert::take_options(&opts));
            let mut ahead = self.ahead.lock().await;
            let sent = match ahead.pop_front() {
                Some((early, sent)) if early == opts => sent,
                other => {
                    // Recovery or the sweep: cancel the early polls first (what they claimed
                    // comes back as orphans), so this take does not wait behind them.
                    drop(other);
                    ahead.clear();
                    self.send(command()).await?
                }
            };
            let reply = match self.finish(sent, opts.wait + self.reply_timeout).await {
                Ok(reply) => reply,
                Err(e) => {
                    ahead.clear(); // they went to the failed session
                    return Err(e);
                }
            };
            let Reply::Taken(mut taken) = reply else {
                return Err(TransportError::Garbled("a take got a put's reply".into()));
            };
            if !opts.wait.is_zero() && !opts.include_claimed {
                while ahead.len() < POLLS_AHEAD {
                    // If this fails, the next take opens a new session.
                    let Ok(sent) = self.send(command()).await else {
                        break;
                    };
                    ahead.push_back((opts, sent));
                }
            }
            if let Ok(mut orphans) = self.orphans.lock() {
                // A recovering take sees an orphan's claim: the orphan (ours, unsent) wins.
                taken.retain(|t| !orphans.iter().any(|o| o.id == t.id));
                taken.splice(0..0, orphans.drain(..));
            }
            Ok(taken.into_iter().map(convert::incoming).collect())
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
            let files = responses
                .iter()
                .map(|r| (r.id.clone(), r.file.clone()))
                .collect();
            let Reply::Put(results) = self.call(Command::Put(files), Duration::ZERO).await? else {
                return Err(TransportError::Garbled("a put got a take's reply".into()));
            };
            convert::deliveries(&responses, results)
        })
    }

    fn exec_count(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn concurrent_delivers(&self) -> usize {
        CONCURRENT_PUTS
    }
}

/// Callers waiting for replies, by sequence number; closed (with why) once the session
/// can no longer answer.
#[derive(Debug)]
enum Waiters {
    Open(HashMap<u64, oneshot::Sender<Reply>>),
    Closed(String),
}

/// One open session.
/// The session's stdin, shared by calls and cancellations, with the cancellations not
/// written yet: each is written before the next command, so it overtakes nothing.
type Input = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;
type PendingCancels = Arc<Mutex<Vec<u64>>>;

struct Session {
    input: Input,
    cancels: PendingCancels,
    /// Bound for writing one command (a session that stops reading fills the pipe).
    write_bound: Duration,
    waiters: Arc<Mutex<Waiters>>,
    next_seq: AtomicU64,
    process: Mutex<tokio::process::Child>,
    tasks: Vec<AbortHandle>,
}

impl Session {
    /// Waits (bounded) for the session's greeting, then starts routing its replies.
    async fn open(
        stream: ExecStream,
        bound: Duration,
        orphans: Orphans,
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
        let hello = tokio::time::timeout(bound, read_line(&mut stdout, MAX_REPLY_LINE)).await;
        if !matches!(&hello, Ok(Ok(Some(line))) if line == session::HELLO.as_bytes()) {
            let _ = process.start_kill();
            // Let the stderr reader catch what the helper said before it died.
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            let said = tail_text(&stderr_tail);
            return Err(TransportError::Session(match hello {
                Err(_) => format!("the helper session did not start within {bound:?}: {said}"),
                _ => format!("the helper session did not start: {said}"),
            }));
        }
        let waiters = Arc::new(Mutex::new(Waiters::Open(HashMap::new())));
        let reader = tokio::spawn(route_replies(stdout, waiters.clone(), orphans, stderr_tail));
        Ok(Self {
            input: Arc::new(tokio::sync::Mutex::new(stdin)),
            cancels: PendingCancels::default(),
            write_bound: bound,
            waiters,
            next_seq: AtomicU64::new(1),
            process: Mutex::new(process),
            tasks: vec![reader.abort_handle(), stderr_task.abort_handle()],
        })
    }

    fn is_open(&self) -> bool {
        matches!(self.waiters.lock().as_deref(), Ok(Waiters::Open(_)))
    }

    /// Writes `command`; the reply is awaited with [`Sent::wait`].
    async fn send(
        session: &Arc<Session>,
        command: Command,
        orphans: &Orphans,
    ) -> Result<Sent, TransportError> {
        let seq = session.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match &mut *session.lock_waiters() {
            Waiters::Open(map) => map.insert(seq, tx),
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
                orphans: orphans.clone(),
            },
            cancel,
        };
        let mut line = session::command_line(seq, &command);
        line.push('\n');
        let written = send(&session.input, &session.cancels, &line);
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
    fn kill(&self, why: &str) {
        close(&self.waiters, why.to_owned());
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(mut process) = self.process.lock() {
            let _ = process.start_kill();
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
    fn drop(&mut self) {
        self.kill("the transport is gone");
    }
}

/// A command written to a session, its reply still to come.
struct Sent {
    session: Arc<Session>,
    reply: ReplySlot,
    cancel: Option<CancelOnDrop>,
}

impl Sent {
    async fn wait(mut self, bound: Duration) -> Result<Reply, TransportError> {
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

/// Where a reply arrives. Dropped with a take's reply in it (its caller gave up just as it
/// came), the requests go to the orphans instead of being lost.
struct ReplySlot {
    rx: oneshot::Receiver<Reply>,
    orphans: Orphans,
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Ok(Reply::Taken(taken)) = self.rx.try_recv() {
            if let Ok(mut orphans) = self.orphans.lock() {
                orphans.extend(taken);
            }
        }
    }
}

/// Writes the pending cancellations, then `line` (if any).
async fn send(input: &Input, pending: &PendingCancels, line: &str) -> io::Result<()> {
    let mut input = input.lock().await;
    let cancels: Vec<u64> = pending
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for take in cancels {
        let cancel = session::command_line(0, &Command::Cancel(take));
        input.write_all(format!("{cancel}\n").as_bytes()).await?;
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
    fn drop(&mut self) {
        if self.seq == 0 {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.push(self.seq);
        }
        // Sent now if possible, else ahead of the next command.
        let (input, pending, bound) = (self.input.clone(), self.pending.clone(), self.bound);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(tokio::time::timeout(bound, async move {
                send(&input, &pending, "").await
            }));
        }
    }
}

/// Hands each reply to its waiting call; closes the waiters when the stream ends or
/// carries something unreadable.
async fn route_replies<R: AsyncBufRead + Unpin>(
    mut stdout: R,
    waiters: Arc<Mutex<Waiters>>,
    orphans: Orphans,
    stderr_tail: Arc<Mutex<String>>,
) {
    let why = loop {
        let line = match read_line(&mut stdout, MAX_REPLY_LINE).await {
            Ok(Some(line)) => line,
            Ok(None) => break "the helper session ended".to_owned(),
            Err(e) => break format!("reading the helper session failed: {e}"),
        };
        let Some((seq, reply)) = session::parse_reply(&line) else {
            break "the helper session sent an unreadable line".to_owned();
        };
        let waiter = match waiters.lock().as_deref_mut() {
            Ok(Waiters::Open(map)) => map.remove(&seq),
            _ => None,
        };
        let unheard = match waiter {
            Some(waiter) => waiter.send(reply).err(),
            None => {
                // Never asked for, or answered twice: not the host's to act on.
                tracing::warn!(seq, "the helper session replied to no pending command");
                None
            }
        };
        // Requests claimed for a caller that gave up are kept for the next take.
        if let (Some(Reply::Taken(taken)), Ok(mut orphans)) = (unheard, orphans.lock()) {
            orphans.extend(taken);
        }
    };
    // Give a dying helper's last words a moment to arrive.
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

/// One line without its newline; `None` at the end. Longer than `limit` is an error.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..end]);
            reader.consume(end + 1);
            return Ok(Some(line));
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        reader.consume(n);
        if line.len() > limit {
            return Err(io::Error::other(format!(
                "a line longer than {limit} bytes"
            )));
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
        let mut input: &[u8] = b"ab\ncdef\ngh";
        assert_eq!(
            read_line(&mut input, 10).await.unwrap(),
            Some(b"ab".to_vec())
        );
        assert_eq!(
            read_line(&mut input, 10).await.unwrap(),
            Some(b"cdef".to_vec())
        );
        assert_eq!(
            read_line(&mut input, 10).await.unwrap(),
            Some(b"gh".to_vec())
        );
        assert_eq!(read_line(&mut input, 10).await.unwrap(), None);
        let mut long: &[u8] = &[b'x'; 100];
        let mut long = BufReader::with_capacity(8, &mut long);
        assert!(read_line(&mut long, 10).await.is_err());
    }
}
