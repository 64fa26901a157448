//! The in-sandbox gateway: agents call it over HTTP on 127.0.0.1; it spools each call as
//! a queue_v1 request file and answers with the response file the host writes back.
//!
//! [`app`] is the router (testable in process); [`run`] serves a listener with
//! per-connection limits and a graceful, bounded shutdown; [`start`] does what the binary
//! does: open the queue, bind, write `ready.json`.

mod body;
mod handler;
mod queue;
mod ready;
mod reply;
mod serve;
mod watch;

use std::net::SocketAddr;

use bridge_protocol::env::GatewayConfig;
use bridge_protocol::wire::ReadyFile;
use tokio::net::TcpListener;

pub use handler::{app, AppState};
pub use queue::Queue;
pub use serve::run;

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The queue directory could not be created.
    Queue(std::io::Error),
    /// The address could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// `ready.json` could not be written.
    Ready(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queue(e) => write!(f, "cannot create the queue directory: {e}"),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Ready(e) => write!(f, "cannot write ready.json: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

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
