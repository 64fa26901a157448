//! Waking callers the moment their response file lands.
//!
//! inotify on `responses/` notifies the waiter of `<id>.json` as soon as the file is
//! renamed into place; a periodic scan backs it up (and replaces it where inotify is not
//! available). A response for a request this gateway published whose caller is gone is a
//! late answer and is deleted; a response to a request someone else wrote is left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_protocol::layout;
use futures_util::StreamExt as _;
use inotify::{EventOwned, Inotify, WatchMask};
use tokio::sync::Notify;

use crate::queue::Queue;
use crate::tasks::{StopSignal, Tasks};

/// Scan interval when inotify works (a safety net for missed events).
const SAFETY_SCAN: Duration = Duration::from_secs(1);

/// How long a finished request's id is remembered, to recognise its late answer.
const REMEMBER_FINISHED: Duration = Duration::from_secs(600);

/// The callers waiting for responses, by request id, and the ids recently finished.
#[derive(Debug, Clone, Default)]
pub(crate) struct Waiters {
    map: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    finished: Arc<Mutex<HashMap<String, Instant>>>,
}

/// A registered wait; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Waiter {
    id: String,
    notify: Arc<Notify>,
    waiters: Waiters,
}

impl Waiters {
    /// Registers `id` (before its request is published, so no answer can be missed).
    pub(crate) fn register(&self, id: &str) -> Waiter {
        let notify = Arc::new(Notify::new());
        if let Ok(mut map) = self.map.lock() {
            map.insert(id.to_owned(), notify.clone());
        }
        Waiter {
            id: id.to_owned(),
            notify,
            waiters: self.clone(),
        }
    }

    /// Wakes the waiter of `id`; returns false when nobody waits for it.
    pub(crate) fn wake(&self, id: &str) -> bool {
        let notify = self.map.lock().ok().and_then(|map| map.get(id).cloned());
        match notify {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Whether `id` is one of ours whose caller is no longer waiting.
    pub(crate) fn recently_finished(&self, id: &str) -> bool {
        self.finished
            .lock()
            .is_ok_and(|finished| finished.contains_key(id))
    }

    fn finish(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
        if let Ok(mut finished) = self.finished.lock() {
            let now = Instant::now();
            finished.retain(|_, at| now.duration_since(*at) < REMEMBER_FINISHED);
            finished.insert(id.to_owned(), now);
        }
    }

    /// How many callers wait now.
    #[allow(clippy::len_without_is_empty)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Waiter {
    /// Resolves when a response for this id may be there (it may also be spurious).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.finish(&self.id);
    }
}

/// Starts the watcher tasks under `tasks` (they end when it stops); returns whether
/// inotify is in use.
pub(crate) fn spawn(
    queue: Queue,
    waiters: Waiters,
    poll_interval: Duration,
    tasks: &Tasks,
) -> bool {
    let inotify = watch_responses(&queue);
    let using_inotify = inotify.is_some();
    let scan_every = if using_inotify {
        SAFETY_SCAN
    } else {
        poll_interval
    };
    if let Some(inotify) = inotify {
        let stop = tasks.stop_signal();
        tasks.spawn_background(inotify_loop(inotify, queue.clone(), waiters.clone(), stop));
    }
    tasks.spawn_background(scan_loop(queue, waiters, scan_every, tasks.stop_signal()));
    using_inotify
}

fn watch_responses(queue: &Queue) -> Option<Inotify> {
    let inotify = Inotify::init()
        .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; polling for responses"))
        .ok()?;
    inotify
        .watches()
        .add(
            queue.layout().responses_dir(),
            WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE,
        )
        .map_err(|e| tracing::warn!(error = %e, "cannot watch responses/; polling"))
        .ok()?;
    Some(inotify)
}

async fn inotify_loop(inotify: Inotify, queue: Queue, waiters: Waiters, mut stop: StopSignal) {
    let mut stream = match inotify.into_event_stream([0u8; 4096]) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "inotify stream failed; the scan loop carries on");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            () = stop.stopped() => return,
            event = stream.next() => event,
        };
        match event {
            Some(Ok(event)) => on_event(&queue, &waiters, &event),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "inotify read failed; the scan loop carries on");
                return;
            }
            None => return,
        }
    }
}

fn on_event(queue: &Queue, waiters: &Waiters, event: &EventOwned) {
    let name = event.name.as_ref().and_then(|n| n.to_str());
    match name.and_then(layout::entry_id) {
        Some(id) => dispatch(queue, waiters, id),
        // Overflow or an unnamed event: look at everything.
        None if event.mask.contains(inotify::EventMask::Q_OVERFLOW) => scan_once(queue, waiters),
        None => {}
    }
}

async fn scan_loop(queue: Queue, waiters: Waiters, every: Duration, mut stop: StopSignal) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.stopped() => return,
            _ = ticker.tick() => scan_once(&queue, &waiters),
        }
    }
}

fn scan_once(queue: &Queue, waiters: &Waiters) {
    match queue.response_ids() {
        Ok(ids) => ids.iter().for_each(|id| dispatch(queue, waiters, id)),
        Err(e) => tracing::warn!(error = %e, "cannot list responses/"),
    }
}

/// Wakes the waiter, or deletes a late answer to one of our requests (its caller is gone).
/// A response to a request this gateway did not publish (another writer in the sandbox)
/// is that writer's to collect.
fn dispatch(queue: &Queue, waiters: &Waiters, id: &str) {
    if waiters.wake(id) || !waiters.recently_finished(id) {
        return;
    }
    tracing::info!(id, "dropping a late response: its caller is gone");
    queue.discard_response(id);
}
