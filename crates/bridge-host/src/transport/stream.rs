//! The stream transport: one long-lived `paperclip-bridge-server session` exec carries
//! every take and put as a message (`session.rs` is the RPC client), so once the
//! session is open a request costs no exec, only about one stream round trip plus the
//! upstream's time. This file is the policy: polls sent ahead, orphans, reopening.
//!
//! A session that ends, hangs past its bound or says something unreadable is killed, the
//! call fails like a failed exec, and the next call opens a new session. The worker's
//! retry and recovery rules cover whatever was lost with it, exactly as for lost execs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_protocol::ops::{Command, Reply};

use super::session::{Sent, Session, Unheard};
use super::{Deliveries, PutItem, TakeOptions, Taken, Transport, TransportError};
use crate::runner::{BoxFuture, ExecStream, Runner, Spawn};

pub(crate) const SESSION: &str = r#"exec "$BIN" session --queue-dir "$Q""#;

/// Long polls kept waiting in the session beyond the one being answered. Over a distant
/// channel a poll takes half a round trip to arrive: with only a few ahead, a burst of
/// requests used them all and the next request waited for a new poll to travel in
/// (measured at d = 25 ms, c = 16: 2 ahead gave p50 54 ms, 16 gave 32 ms). Each waiting
/// poll costs the sandbox nothing but a timer; its reply is bounded like any take's.
const POLLS_AHEAD: usize = 16;
/// Put commands under way at once on one session: an answer must not wait for earlier
/// puts' round trips to finish.
const CONCURRENT_PUTS: usize = 64;

/// The stream transport over any runner that can stream.
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
    /// An exec already running the session (deployment's start-up became it), used for
    /// the first session instead of opening one.
    adopted: Mutex<Option<ExecStream>>,
}

/// How long the ids a recovering take returned are remembered: far longer than any
/// cancelled poll can take to answer (its wait plus the reply bound).
const RECOVERED_MEMORY: Duration = Duration::from_secs(600);
/// Most ids remembered (a recovery returns at most a queue's worth).
const RECOVERED_MAX: usize = 65_536;

/// Taken requests whose take call was dropped before the reply came.
type Orphans = Arc<Mutex<OrphanState>>;

#[derive(Debug, Default)]
struct OrphanState {
    /// Orphans to hand to the next take.
    pending: Vec<Taken>,
    /// Requests recovering takes returned, and when. A poll cancelled for a recovering take
    /// may have claimed one of them and answer late: by then it may be forwarded and
    /// answered, so that late copy must be dropped, not forwarded a second time.
    recovered: VecDeque<(String, Instant)>,
}

impl OrphanState {
    fn was_recovered(&self, id: &str) -> bool {
        self.recovered.iter().any(|(r, _)| r == id)
    }

    fn remember_recovered(&mut self, taken: &[Taken]) {
        let now = Instant::now();
        while self
            .recovered
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > RECOVERED_MEMORY)
            || self.recovered.len() + taken.len() > RECOVERED_MAX
        {
            if self.recovered.pop_front().is_none() {
                break;
            }
        }
        self.recovered
            .extend(taken.iter().map(|t| (t.id.clone(), now)));
    }
}

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
            adopted: Mutex::new(None),
        }
    }

    /// The first session is `stream`, an exec already running `session` whose greeting
    /// has not been read (deployment's one-exec start-up), instead of a new exec.
    pub fn with_opened(self, stream: ExecStream) -> Self {
        if let Ok(mut adopted) = self.adopted.lock() {
            *adopted = Some(stream);
        }
        self
    }

    /// Sends `command` and waits (at most `extra_wait` + the reply bound) for its reply.
    async fn call(&self, command: Command, extra_wait: Duration) -> Result<Reply, TransportError> {
        let sent = self.send(command).await?;
        self.finish(sent, extra_wait + self.reply_timeout).await
    }

    /// Sends `command` on the open (or a new) session.
    async fn send(&self, command: Command) -> Result<Sent, TransportError> {
        let session = self.session().await?;
        let sent = Session::send(&session, command).await;
        if sent.is_err() {
            self.discard(&session).await;
        }
        sent
    }

    /// Waits up to `bound` for the reply to `sent`; a session that fails is discarded.
    async fn finish(&self, sent: Sent, bound: Duration) -> Result<Reply, TransportError> {
        let session = sent.session().clone();
        let result = sent.wait(bound).await;
        if result.is_err() {
            self.discard(&session).await;
        }
        match result? {
            Reply::Error(why) => Err(TransportError::Session(format!("the session said: {why}"))),
            reply => Ok(reply),
        }
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_open()) {
            return Ok(session.clone());
        }
        let adopted = self.adopted.lock().ok().and_then(|mut a| a.take());
        // The exec that became the session counts as this transport's, like one it opens.
        self.opened.fetch_add(1, Ordering::Relaxed);
        let stream = match adopted {
            Some(stream) => stream,
            None => {
                let spawn = Spawn {
                    script: SESSION.into(),
                    env: vec![
                        ("Q".into(), self.queue_dir.to_string_lossy().into_owned()),
                        ("BIN".into(), self.binary.to_string_lossy().into_owned()),
                    ],
                    cwd: None,
                };
                self.runner.stream(spawn).await?
            }
        };
        let session = Session::open(stream, self.reply_timeout, self.unheard()).await?;
        let session = Arc::new(session);
        tracing::debug!("session open");
        *current = Some(session.clone());
        Ok(session)
    }

    /// Takes claimed for a caller that gave up become orphans; other late replies (puts)
    /// need nothing: a put is safe to repeat.
    fn unheard(&self) -> Unheard {
        let orphans = self.orphans.clone();
        Arc::new(move |reply| {
            if let (Reply::Taken(taken), Ok(mut orphans)) = (reply, orphans.lock()) {
                for t in taken {
                    if orphans.was_recovered(&t.id) {
                        tracing::debug!(id = %bridge_protocol::shown(&t.id), "a late take's request was already recovered");
                    } else {
                        orphans.pending.push(t);
                    }
                }
            }
        })
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
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>> {
        Box::pin(async move {
            let command = || Command::Take(opts);
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
                taken.retain(|t| !orphans.pending.iter().any(|o| o.id == t.id));
                if opts.include_claimed {
                    orphans.remember_recovered(&taken);
                }
                let pending = std::mem::take(&mut orphans.pending);
                taken.splice(0..0, pending);
            }
            Ok(taken)
        })
    }

    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_> {
        Box::pin(async move {
            let command = Command::Put(responses.clone());
            let Reply::Put(results) = self.call(command, Duration::ZERO).await? else {
                return Err(TransportError::Garbled("a put got a take's reply".into()));
            };
            Ok(super::deliveries(&responses, results))
        })
    }

    fn exec_count(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn concurrent_delivers(&self) -> usize {
        CONCURRENT_PUTS
    }
}
