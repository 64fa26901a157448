//! The gateway's own tasks: one stop signal they all observe, a join of them all before
//! [`crate::run`] returns, and a count of those still alive (so a test can see none is
//! left behind).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Background tasks (the response watcher's) and the signal that stops them.
#[derive(Debug)]
pub(crate) struct Tasks {
    stop: watch::Sender<bool>,
    background: Mutex<JoinSet<()>>,
    live: Arc<AtomicUsize>,
}

/// Resolves once the gateway stops (or once whoever could stop it is gone).
#[derive(Debug, Clone)]
pub(crate) struct StopSignal(watch::Receiver<bool>);

/// Counts one in a shared count for as long as it exists (a live task, a call in progress).
#[derive(Debug)]
pub(crate) struct CountGuard(Arc<AtomicUsize>);

impl Tasks {
    pub(crate) fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            background: Mutex::new(JoinSet::new()),
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The signal a task selects on to leave its loop.
    pub(crate) fn stop_signal(&self) -> StopSignal {
        StopSignal(self.stop.subscribe())
    }

    /// Spawns a task that runs until the stop signal; [`Tasks::stop`] joins it.
    /// Needs a tokio runtime.
    pub(crate) fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        let task = self.tracked(task);
        if let Ok(mut background) = self.background.lock() {
            background.spawn(task);
        }
    }

    /// `task`, counted in [`Tasks::live`] from now until it is finished or dropped.
    pub(crate) fn tracked<F: Future>(&self, task: F) -> impl Future<Output = F::Output> {
        let live = CountGuard::new(&self.live);
        async move {
            let _live = live;
            task.await
        }
    }

    /// Tasks that exist now (finished ones no longer count).
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Signals every task to stop and waits until each background task has ended.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        // Taken out of the lock: a std mutex guard must not be held across an await.
        let mut background = self
            .background
            .lock()
            .map(|mut set| std::mem::take(&mut *set))
            .unwrap_or_default();
        while let Some(ended) = background.join_next().await {
            if let Err(e) = ended {
                tracing::warn!(error = %e, "a background task failed");
            }
        }
    }
}

impl StopSignal {
    /// Resolves once stop has been signalled. Cancel-safe, so it can sit in a `select!`
    /// in a loop.
    pub(crate) async fn stopped(&mut self) {
        // An error means the sender is gone: nobody can stop us any more, so stop now.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

impl CountGuard {
    /// Counts one more in `count` until the guard is dropped.
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_and_joins_every_background_task() {
        let tasks = Tasks::new();
        for _ in 0..3 {
            let mut stop = tasks.stop_signal();
            tasks.spawn_background(async move { stop.stopped().await });
        }
        assert_eq!(tasks.live(), 3);
        tasks.stop().await;
        assert_eq!(tasks.live(), 0);
    }

    #[tokio::test]
    async fn a_dropped_tracked_future_no_longer_counts() {
        let tasks = Tasks::new();
        let pending = tasks.tracked(std::future::pending::<()>());
        assert_eq!(tasks.live(), 1);
        drop(pending);
        assert_eq!(tasks.live(), 0);
    }
}
