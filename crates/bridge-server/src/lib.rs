//! The in-sandbox gateway: agents call it over HTTP on 127.0.0.1; it spools each call as
//! a queue_v1 request file and answers with the response file the host writes back.
//!
//! [`app`] is the router (testable in process); [`run`] serves a listener with
//! per-connection limits and a graceful, bounded shutdown; [`start`] does what the binary
//! does: open the queue, bind, write `ready.json`.

#![warn(missing_docs, unreachable_pub)]

mod body;
pub mod cli;
pub mod fdlimit;
mod handler;
pub mod ops;
mod queue;
mod queue_dir;
mod ready;
mod refusal;
mod reply;
mod serve;
mod tasks;
mod watch;

use std::net::SocketAddr;

use bridge_protocol::env::GatewayConfig;
use bridge_protocol::wire::ReadyFile;
use tokio::net::TcpListener;

pub use handler::{app, AppState};
pub use queue::Queue;
pub use serve::run;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The queue directory could not be created.
    #[error("cannot create the queue directory: {0}")]
    Queue(#[source] std::io::Error),
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// `ready.json` could not be written.
    #[error("cannot write ready.json: {0}")]
    Ready(#[source] std::io::Error),
}

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise, coloured only on a terminal:
/// the one tracing set-up of both binaries (the gateway's stderr is its log file; the
/// host CLI keeps stdout for `up`'s JSON line and the agent).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Opens the queue, binds, and writes `ready.json`. Serve the result with [`run`].
pub async fn start(
    config: GatewayConfig,
) -> Result<(TcpListener, AppState, ReadyFile), StartError> {
    let addr = SocketAddr::new(config.host, config.port);
    let state = AppState::new(config).map_err(StartError::Queue)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Bind(addr, e))?;
    let ready = ready::write(state.queue(), bound).map_err(StartError::Ready)?;
    Ok((listener, state, ready))
}
