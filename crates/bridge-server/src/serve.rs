//! Accepting connections with per-connection limits, and stopping gracefully: on shutdown
//! every task the gateway started (one per connection, the response watcher's) is told to
//! stop and joined, so nothing of the gateway outlives [`run`].
//!
//! Under a flood (anything in the sandbox may open connections) the gateway stays
//! responsive: at most `max_connections` are open; at the cap, the connection idle the
//! longest (no call in progress) is closed to make room, and only when every one is busy
//! is a new one refused, at once, with a minimal 503. A connection gets `header_timeout`
//! to send each request head, counted from when it starts waiting for one, so neither a
//! slow head nor an idle keep-alive holds a place for longer.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinError, JoinSet};

use crate::handler::{app, AppState};

/// The whole answer to a connection over the cap while every open one is busy; then the
/// connection is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\ncontent-length: 32\r\nconnection: close\r\n\r\n\
{\"error\":\"too many connections\"}";
/// Refused connections being answered at once; past this, one is just closed (a flood
/// must not turn into as many tasks).
const MAX_REFUSALS: usize = 64;
/// How long a refused connection is read (and discarded) after its 503, so closing it
/// does not reset the connection before the client reads the answer.
const REFUSAL_LINGER: Duration = Duration::from_millis(200);
/// Largest request head (and read buffer) a connection may use.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Upper bound on the grace given to in-flight callers at shutdown.
const MAX_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for a connection closed for room to release its socket.
const REAP_BOUND: Duration = Duration::from_millis(200);
/// Pause after a failed accept (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets in-flight
/// callers finish for a bounded grace: min(response timeout, 10 s) plus a second.
/// Connections still open after that are closed. Returns once every task the gateway
/// started has ended (see [`AppState::live_tasks`]).
pub async fn run(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let grace = state.config().response_timeout.min(MAX_GRACE) + Duration::from_secs(1);
    let mut connections = Connections::new(state.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // A shutdown that is due wins over a connection waiting to be accepted.
            biased;
            () = &mut shutdown => break,
            // Ended connections are reaped first, so the cap counts only open ones.
            Some(ended) = connections.running.join_next_with_id(), if !connections.running.is_empty() => {
                connections.ended(ended);
            }
            Some(_) = connections.refusals.join_next(), if !connections.refusals.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.admit(stream).await,
                Err(e) => {
                    // Back off instead of spinning on an error that will repeat.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: finishing in-flight callers"
    );
    connections.drain(grace).await;
    // Last: callers still in flight during the grace needed the watcher to wake them.
    state.tasks().stop().await;
}

/// The open connections, each served by its own task.
struct Connections {
    builder: http1::Builder,
    service: Router,
    graceful: GracefulShutdown,
    running: JoinSet<()>,
    /// Refused connections being told so ([`MAX_REFUSALS`] at most).
    refusals: JoinSet<()>,
    /// Every connection task not yet reaped or closed for room, by task.
    open: HashMap<tokio::task::Id, Open>,
    /// Accept order, so the connection idle the longest can be found.
    accepted: u64,
    max: usize,
    /// Whether the last connection was refused (the warning is once per flood).
    refusing: bool,
    state: AppState,
}

/// One open connection.
struct Open {
    accepted: u64,
    /// Calls in progress on it.
    busy: Arc<AtomicUsize>,
    abort: AbortHandle,
}

impl Connections {
    fn new(state: AppState) -> Self {
        let config = state.config();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        Self {
            builder,
            service: app(state.clone()),
            graceful: GracefulShutdown::new(),
            running: JoinSet::new(),
            refusals: JoinSet::new(),
            open: HashMap::new(),
            accepted: 0,
            max: config.max_connections.max(1),
            refusing: false,
            state,
        }
    }

    /// Serves `stream` if there is room (made by closing an idle connection at the cap);
    /// else refuses it at once.
    async fn admit(&mut self, stream: TcpStream) {
        if self.open.len() >= self.max {
            let Some(closed) = self.close_longest_idle() else {
                return self.refuse(stream);
            };
            self.reap(closed).await;
        }
        self.refusing = false;
        self.serve(stream);
    }

    /// Refuses `stream` at once: every connection has a call in progress.
    fn refuse(&mut self, stream: TcpStream) {
        if !self.refusing {
            tracing::warn!(
                max = self.max,
                "every connection is busy: refusing new ones"
            );
        }
        self.refusing = true;
        // On a task of its own, bounded: the flood must not slow the accept loop.
        if self.refusals.len() < MAX_REFUSALS {
            self.refusals
                .spawn(self.state.tasks().tracked(refuse(stream)));
        }
    }

    /// Waits (bounded) until the connection closed for room has ended and so released its
    /// socket: room is made before the next one is served, so the open sockets never pass
    /// the cap, even in a burst (a file-descriptor limit near the cap stays safe).
    async fn reap(&mut self, closed: tokio::task::Id) {
        let _ = tokio::time::timeout(REAP_BOUND, async {
            while let Some(ended) = self.running.join_next_with_id().await {
                let done = task_id(&ended) == closed;
                self.ended(ended);
                if done {
                    break;
                }
            }
        })
        .await;
    }

    /// Closes the open connection idle the longest; `None` if every one has a call.
    fn close_longest_idle(&mut self) -> Option<tokio::task::Id> {
        let idle = self
            .open
            .iter()
            .filter(|(_, open)| open.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, open)| open.accepted)
            .map(|(id, _)| *id);
        let open = self.open.remove(&idle?)?;
        tracing::debug!("at the connection cap: closing the longest idle connection");
        open.abort.abort();
        Some(open.abort.id())
    }

    /// Serves one accepted connection on a task of its own, watched for the graceful stop.
    fn serve(&mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(AtomicUsize::new(0));
        let service = Counted {
            inner: TowerToHyperService::new(self.service.clone()),
            busy: busy.clone(),
        };
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        let watched = self.graceful.watch(connection);
        let abort = self.running.spawn(self.state.tasks().tracked(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }));
        self.accepted += 1;
        let open = Open {
            accepted: self.accepted,
            busy,
            abort,
        };
        self.open.insert(open.abort.id(), open);
    }

    /// Forgets a connection task that ended.
    fn ended(&mut self, ended: Result<(tokio::task::Id, ()), JoinError>) {
        self.open.remove(&task_id(&ended));
        log_failure(ended.map(|_| ()));
    }

    /// Asks every connection to finish its request and close; after `grace`, closes
    /// those still open (dropping their handlers withdraws their request files). Returns
    /// once every connection task has ended.
    async fn drain(self, grace: Duration) {
        let Self {
            graceful,
            mut running,
            mut refusals,
            ..
        } = self;
        refusals.abort_all();
        while refusals.join_next().await.is_some() {}
        let finished = tokio::time::timeout(grace, async {
            graceful.shutdown().await;
            join_all(&mut running).await;
        })
        .await;
        if finished.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
            running.abort_all();
        }
        join_all(&mut running).await;
    }
}

fn task_id(ended: &Result<(tokio::task::Id, ()), JoinError>) -> tokio::task::Id {
    match ended {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    }
}

/// Answers a refused connection 503 and closes it, reading what the client sent for a
/// moment first: closing a socket with unread input resets the connection, and the client
/// might never see the answer.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await?;
        let mut sink = vec![0u8; 4096];
        let mut read = 0;
        while read < MAX_HEAD_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// A connection's service that counts its calls in progress: a connection with none is
/// idle, and may be closed to make room for a new one.
struct Counted<S> {
    inner: S,
    busy: Arc<AtomicUsize>,
}

type CallFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<R, S> hyper::service::Service<R> for Counted<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CallFuture<S::Response, S::Error>;

    fn call(&self, request: R) -> Self::Future {
        // Counts one call while it lives (dropped when the call ends or is cancelled).
        let busy = crate::tasks::CountGuard::new(&self.busy);
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = call.await;
            drop(busy);
            answer
        })
    }
}

async fn join_all(running: &mut JoinSet<()>) {
    while let Some(ended) = running.join_next().await {
        log_failure(ended);
    }
}

/// A connection task that panicked is worth a warning; one closed at the end of the
/// grace is what was asked for.
fn log_failure(ended: Result<(), JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            tracing::warn!(error = %e, "a connection task panicked");
        }
    }
}
