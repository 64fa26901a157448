//! Keeping the gateway up: a cheap liveness check through the runner every
//! [`RestartPolicy::check_interval`]; a gateway the sandbox reports gone is started again
//! with the same port, token and queue (the worker and its transport never notice: they
//! work on the queue, not the gateway). Restarts in a row are bounded and spaced out; a
//! gateway that keeps crashing ends the run with the end of its log in the error.
//!
//! Callers waiting at the crash lose their connection (their answer is an error); the
//! restart removes their request files, so nothing is forwarded for a caller who is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_protocol::shown_error;
use tokio::sync::watch;

use super::steps::{self, Health, Launch, Place};
use super::DeployError;
use crate::runner::Runner;

/// How often the gateway's liveness is checked (one short exec each time).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Restarts in a row, with no stable period between them, before the run ends.
pub const MAX_RESTARTS: u32 = 5;
/// Pause before the first restart in a row; it doubles up to [`RESTART_BACKOFF_CAP`].
pub const RESTART_BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest pause before a restart.
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A gateway that has run this long is stable: the count of restarts in a row restarts.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How the host watches the gateway and restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// How often liveness is checked.
    pub check_interval: Duration,
    /// Restarts in a row before the run ends with an error.
    pub max_restarts: u32,
    /// Pause before the first restart in a row; doubles up to `backoff_cap`.
    pub backoff_start: Duration,
    /// Longest pause before a restart.
    pub backoff_cap: Duration,
    /// How long a gateway must run for the restarts before it to stop counting.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            check_interval: CHECK_INTERVAL,
            max_restarts: MAX_RESTARTS,
            backoff_start: RESTART_BACKOFF_START,
            backoff_cap: RESTART_BACKOFF_CAP,
            stable_after: STABLE_AFTER,
        }
    }
}

/// Why the supervisor's restart loop ended.
enum Ended {
    /// The bridge is stopping.
    Stopped,
    /// The gateway kept crashing.
    Failed(DeployError),
}

/// What the supervisor task owns.
#[derive(Debug)]
pub(crate) struct Supervisor {
    pub(crate) runner: Arc<dyn Runner>,
    pub(crate) place: Place,
    pub(crate) launch: Launch,
    pub(crate) policy: RestartPolicy,
    pub(crate) restarts: Arc<AtomicU64>,
    pub(crate) metrics: Option<crate::metrics::Metrics>,
    pub(crate) failure: watch::Sender<Option<Arc<DeployError>>>,
}

impl Supervisor {
    /// Watches until `stop` changes (or its sender goes), or the gateway keeps crashing.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut streak = 0;
        let mut started = Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(self.policy.check_interval) => {}
            }
            match steps::check(self.runner.as_ref(), &self.place).await {
                Health::Alive if started.elapsed() >= self.policy.stable_after => streak = 0,
                Health::Alive => {}
                Health::Unknown(why) => tracing::debug!(error = %why, "liveness check failed"),
                Health::Dead => match self.restart(&mut streak, &mut stop).await {
                    Ok(()) => started = Instant::now(),
                    Err(Ended::Stopped) => return,
                    Err(Ended::Failed(e)) => {
                        tracing::error!(error = %shown_error(&e), "giving up on the gateway");
                        let _ = self.failure.send(Some(Arc::new(e)));
                        return;
                    }
                },
            }
        }
    }

    /// Starts the gateway again, after a pause that grows with `streak` (restarts in a
    /// row); a start that fails counts as one more crash.
    async fn restart(
        &self,
        streak: &mut u32,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        tracing::warn!(
            restarts_in_a_row = *streak,
            "the gateway is gone; restarting it"
        );
        let mut last = String::from("the gateway process was gone");
        loop {
            if *streak >= self.policy.max_restarts {
                return Err(Ended::Failed(self.crashed(*streak, last).await));
            }
            tokio::select! {
                _ = stop.changed() => return Err(Ended::Stopped),
                () = tokio::time::sleep(self.pause(*streak)) => {}
            }
            *streak += 1;
            match steps::start_gateway(self.runner.as_ref(), &self.place, &self.launch).await {
                Ok(ready) => {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = &self.metrics {
                        m.restarted();
                    }
                    tracing::info!(pid = ready.pid, "gateway restarted");
                    return Ok(());
                }
                Err(e) => {
                    last = shown_error(&e).to_string();
                    tracing::warn!(error = %last, "restarting the gateway failed");
                }
            }
        }
    }

    fn pause(&self, streak: u32) -> Duration {
        let factor = 1u32 << streak.min(16);
        (self.policy.backoff_start * factor).min(self.policy.backoff_cap)
    }

    async fn crashed(&self, restarts: u32, last: String) -> DeployError {
        let log = steps::log_tail(self.runner.as_ref(), &self.place).await;
        DeployError::GatewayCrashed {
            restarts,
            last,
            log,
        }
    }
}
