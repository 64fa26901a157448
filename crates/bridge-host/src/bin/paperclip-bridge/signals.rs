//! SIGINT/SIGTERM as a value the commands can wait on.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Delivers the name of each SIGINT or SIGTERM received.
#[derive(Debug)]
pub struct Shutdown {
    rx: mpsc::UnboundedReceiver<&'static str>,
}

impl Shutdown {
    /// Installs the handlers (start-up: failing here is fatal).
    pub fn install() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        for (kind, name) in [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
        ] {
            let mut stream = signal(kind)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(name).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { rx })
    }

    /// Waits for the next signal (forever if the handlers are gone).
    pub async fn recv(&mut self) -> &'static str {
        match self.rx.recv().await {
            Some(name) => name,
            None => std::future::pending().await,
        }
    }
}
