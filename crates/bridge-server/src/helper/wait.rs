//! The long poll of `take`: wait (bounded) until a request is pending, woken by inotify on
//! `requests/`, with a slow re-check in case an event is missed or inotify is unavailable.

use std::io;
use std::time::Duration;

use bridge_protocol::layout::QueueLayout;
use futures_util::StreamExt as _;
use inotify::{Inotify, WatchMask};

use super::{anything_pending, take_now, TakeOptions, Taken};

/// Re-check interval while waiting (the fallback when no event comes).
const RECHECK: Duration = Duration::from_millis(250);

/// Waits up to `opts.wait` for a pending request, then takes what is there.
pub async fn take_waiting(layout: &QueueLayout, opts: &TakeOptions) -> io::Result<Vec<Taken>> {
    let deadline = tokio::time::Instant::now() + opts.wait;
    if !opts.wait.is_zero() && !anything_pending(layout, opts.include_claimed)? {
        let mut events = watch(layout);
        // Check again: a request may have landed before the watch was in place.
        while !anything_pending(layout, opts.include_claimed)? {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let nap = (deadline - now).min(RECHECK);
            match events.as_mut() {
                Some(stream) => {
                    let _ = tokio::time::timeout(nap, stream.next()).await;
                }
                None => tokio::time::sleep(nap.min(Duration::from_millis(20))).await,
            }
        }
    }
    take_now(layout, opts)
}

fn watch(layout: &QueueLayout) -> Option<inotify::EventStream<[u8; 1024]>> {
    let inotify = Inotify::init().ok()?;
    inotify
        .watches()
        .add(
            layout.requests_dir(),
            WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE,
        )
        .ok()?;
    inotify.into_event_stream([0u8; 1024]).ok()
}
