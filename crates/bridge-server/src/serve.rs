//! Accepting connections with per-connection limits, and stopping gracefully: on shutdown
//! every task the gateway started (one per connection, the response watcher's) is told to
//! stop and joined, so nothing of the gateway outlives [`run`].

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinError, JoinSet};

use crate::handler::{app, AppState};

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) a connection may use.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Upper bound on the grace given to in-flight callers at shutdown.
const MAX_GRACE: Duration = Duration::from_secs(10);
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
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.serve(stream),
                Err(e) => {
                    // Back off instead of spinning on an error that will repeat.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap ended connections as they go, so the set holds only open ones.
            Some(ended) = connections.running.join_next(), if !connections.running.is_empty() => {
                log_failure(ended);
            }
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
    state: AppState,
}

impl Connections {
    fn new(state: AppState) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
        Self {
            builder,
            service: app(state.clone()),
            graceful: GracefulShutdown::new(),
            running: JoinSet::new(),
            state,
        }
    }

    /// Serves one accepted connection on a task of its own, watched for the graceful stop.
    fn serve(&mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let connection = self.builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(self.service.clone()),
        );
        let watched = self.graceful.watch(connection);
        self.running.spawn(self.state.tasks().tracked(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }));
    }

    /// Asks every connection to finish its request and close; after `grace`, closes
    /// those still open (dropping their handlers withdraws their request files). Returns
    /// once every connection task has ended.
    async fn drain(self, grace: Duration) {
        let Self {
            graceful,
            mut running,
            ..
        } = self;
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
