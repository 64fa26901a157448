//! The long poll of `take`: wait (bounded) until a request is pending, woken by inotify on
//! `requests/`, with a slow re-check in case an event is missed or inotify is unavailable.
//!
//! One watch serves many takes. Closing an inotify instance costs milliseconds (the kernel
//! waits for an SRCU grace period), which a watch per take would add to every request.

use std::io;
use std::time::Duration;

use bridge_protocol::layout::QueueLayout;
use futures_util::{FutureExt as _, StreamExt as _};
use inotify::{EventStream, Inotify, WatchMask};

use super::{anything_pending, take_now, TakeOptions, Taken};

/// Re-check interval while waiting (the fallback when no event comes).
const RECHECK: Duration = Duration::from_millis(250);
/// Poll interval where inotify is unavailable.
const POLL: Duration = Duration::from_millis(20);

type Events = EventStream<[u8; 1024]>;

/// A queue's `requests/` directory, watched for as long as this lives.
pub struct RequestWatch {
    layout: QueueLayout,
    /// `None` until the first wait; then `Some(None)` if inotify is unavailable.
    events: Option<Option<Events>>,
}

impl std::fmt::Debug for RequestWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestWatch")
            .field("layout", &self.layout)
            .field("inotify", &matches!(self.events, Some(Some(_))))
            .finish()
    }
}

impl RequestWatch {
    /// A watch on `layout`'s requests; inotify is set up at the first wait (inside a tokio
    /// runtime).
    pub fn new(layout: QueueLayout) -> Self {
        Self {
            layout,
            events: None,
        }
    }

    /// Waits up to `opts.wait` for a pending request, then takes what is there.
    pub async fn take(&mut self, opts: &TakeOptions) -> io::Result<Vec<Taken>> {
        let deadline = tokio::time::Instant::now() + opts.wait;
        if !opts.wait.is_zero() {
            self.forget_old_events();
            // Any request that lands after this check raises an event.
            while !anything_pending(&self.layout, opts.include_claimed)? {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                let nap = (deadline - now).min(RECHECK);
                match self.events() {
                    Some(stream) => {
                        if let Ok(None | Some(Err(_))) =
                            tokio::time::timeout(nap, stream.next()).await
                        {
                            tracing::warn!("the inotify watch ended; polling for requests");
                            self.events = Some(None);
                        }
                    }
                    None => tokio::time::sleep(nap.min(POLL)).await,
                }
            }
        }
        take_now(&self.layout, opts)
    }

    fn events(&mut self) -> Option<&mut Events> {
        let layout = &self.layout;
        self.events.get_or_insert_with(|| watch(layout)).as_mut()
    }

    /// Drops events that arrived between takes (the check that follows sees their files).
    fn forget_old_events(&mut self) {
        if let Some(Some(stream)) = self.events.as_mut() {
            while let Some(Some(_)) = stream.next().now_or_never() {}
        }
    }
}

/// One take with a watch of its own (the one-shot `take` subcommand).
pub async fn take_waiting(layout: &QueueLayout, opts: &TakeOptions) -> io::Result<Vec<Taken>> {
    RequestWatch::new(layout.clone()).take(opts).await
}

fn watch(layout: &QueueLayout) -> Option<Events> {
    let inotify = Inotify::init().ok()?;
    inotify
        .watches()
        .add(
            layout.requests_dir(),
            // A symlink in place of `requests/` is not watched (the take refuses it).
            WatchMask::MOVED_TO
                | WatchMask::CLOSE_WRITE
                | WatchMask::DONT_FOLLOW
                | WatchMask::ONLYDIR,
        )
        .ok()?;
    inotify.into_event_stream([0u8; 1024]).ok()
}
