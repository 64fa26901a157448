//! The queue through a directory this machine sees directly (development and tests). The
//! rules (claims, batching, delivery only while the caller waits) are the gateway's own
//! queue operations, [`bridge_server::ops`], run here instead of in the sandbox.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bridge_protocol::layout::QueueLayout;
use bridge_server::ops;

use super::{Deliveries, PutItem, TakeOptions, Taken, Transport, TransportError};
use crate::runner::BoxFuture;

/// Shared-directory transport.
#[derive(Debug)]
pub struct SharedFsTransport {
    layout: QueueLayout,
    /// One watch for every take (made at the first, inside the runtime).
    watch: tokio::sync::Mutex<Option<ops::RequestWatch>>,
    calls: AtomicU64,
}

impl SharedFsTransport {
    /// The queue at `queue_dir`, a directory this machine sees.
    pub fn new(queue_dir: PathBuf) -> Self {
        Self {
            layout: QueueLayout::new(queue_dir),
            watch: tokio::sync::Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }
}

impl Transport for SharedFsTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut watch = self.watch.lock().await;
            let watch = watch.get_or_insert_with(|| ops::RequestWatch::new(self.layout.clone()));
            Ok(watch.take(&opts).await?)
        })
    }

    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let layout = self.layout.clone();
            let items = responses.clone();
            // Every answer is tried: one that fails (say, something planted at its temp
            // name) is that answer's failure and does not stop the rest being written.
            let results = tokio::task::spawn_blocking(move || ops::put_all(&layout, items))
                .await
                .map_err(|e| TransportError::Garbled(e.to_string()))?;
            Ok(super::deliveries(&responses, results))
        })
    }

    fn exec_count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}
