//! An exec-latency injector: a runner that adds a fixed delay before every exec, standing
//! in for a hosted sandbox provider's round trip (benchmarks).

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, Capabilities, Exec, ExecOutput, Runner, RunnerError, Spawn};

/// Wraps a runner; every exec waits `delay` first.
#[derive(Debug)]
pub struct DelayRunner {
    inner: Arc<dyn Runner>,
    delay: Duration,
}

impl DelayRunner {
    pub fn new(inner: Arc<dyn Runner>, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl Runner for DelayRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.exec(exec).await
        })
    }

    fn spawn(&self, spawn: Spawn) -> Result<tokio::process::Child, RunnerError> {
        self.inner.spawn(spawn)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
