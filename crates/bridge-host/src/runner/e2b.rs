//! E2B sandboxes: [`E2bSandbox`] creates one (or attaches to one) through E2B's control
//! plane and keeps it alive; its [`E2bRunner`] execs through envd's process API (Connect
//! protocol, JSON codec) and uploads through envd's files API. No local process is
//! involved: the runner is HTTP all the way.
//!
//! The wire facts, and which SDK behaviour each follows, are in `docs/providers.md`; the
//! test double in `crates/bridge-host/tests/fake_e2b` is checked against E2B's official
//! Python SDK.

mod config;
mod connect;
mod control;
mod envd;
mod error;
mod process;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use config::{
    E2bConfig, DEBUG_SANDBOX_ID, DEFAULT_DOMAIN, ENVD_PORT, REQUEST_TIMEOUT, SANDBOX_TIMEOUT,
};
pub use connect::{ConnectError, FramingError};
pub use error::E2bError;

use control::Control;
use envd::Envd;

use super::{BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Runner, RunnerError, Spawn};

/// Runs scripts in one E2B sandbox through its envd.
#[derive(Debug, Clone)]
pub struct E2bRunner {
    envd: Arc<Envd>,
}

impl Runner for E2bRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(process::exec(self.envd.clone(), exec))
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(process::stream(self.envd.clone(), spawn))
    }

    fn upload(&self, path: PathBuf, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async move {
            let path = path.to_string_lossy().into_owned();
            Ok(self.envd.upload(&path, bytes).await?)
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: true,
            shared_fs: false,
            upload: true,
        }
    }
}

/// One E2B sandbox for the length of a run: created (and killed at [`E2bSandbox::close`])
/// or attached to (and left running), its time to live renewed meanwhile.
#[derive(Debug)]
pub struct E2bSandbox {
    id: String,
    runner: Arc<E2bRunner>,
    control: Option<Control>,
    owned: bool,
    renewals: Option<JoinHandle<()>>,
}

impl E2bSandbox {
    /// A new sandbox from `template` (in debug mode: the local envd, no control plane).
    pub async fn create(config: &E2bConfig, template: &str) -> Result<Self, E2bError> {
        if config.debug {
            return Self::debug(config);
        }
        let control = Control::new(config)?;
        let record = control.create(template, config.sandbox_timeout).await?;
        tracing::info!(sandbox = %record.sandbox_id, template, envd = %bridge_protocol::shown(&record.envd_version), "created an E2B sandbox");
        Self::from_record(config, control, record, true).await
    }

    /// The running sandbox `id`, which stays running after [`E2bSandbox::close`].
    pub async fn attach(config: &E2bConfig, id: &str) -> Result<Self, E2bError> {
        if config.debug {
            return Self::debug(config);
        }
        let control = Control::new(config)?;
        let record = control.connect(id, config.sandbox_timeout).await?;
        tracing::info!(sandbox = %record.sandbox_id, envd = %bridge_protocol::shown(&record.envd_version), "attached to an E2B sandbox");
        Self::from_record(config, control, record, false).await
    }

    fn debug(config: &E2bConfig) -> Result<Self, E2bError> {
        let base = config.envd_url(DEBUG_SANDBOX_ID, None);
        let envd = Envd::new(config, base, DEBUG_SANDBOX_ID, None)?;
        Ok(Self {
            id: DEBUG_SANDBOX_ID.to_owned(),
            runner: Arc::new(E2bRunner {
                envd: Arc::new(envd),
            }),
            control: None,
            owned: false,
            renewals: None,
        })
    }

    async fn from_record(
        config: &E2bConfig,
        control: Control,
        record: wire::SandboxRecord,
        owned: bool,
    ) -> Result<Self, E2bError> {
        let id = record.sandbox_id.clone();
        let base = config.envd_url(&id, record.domain.as_deref());
        let made = control::check_envd(&record)
            .and_then(|()| Envd::new(config, base, &id, record.envd_access_token.as_deref()));
        let envd = match made {
            Ok(envd) => envd,
            Err(e) => {
                // We made it and cannot use it: it must not linger.
                if owned {
                    if let Err(kill) = control.kill(&id).await {
                        tracing::warn!(sandbox = %id, error = %kill, "could not kill the unusable E2B sandbox");
                    }
                }
                return Err(e);
            }
        };
        let renew = Renewal {
            control: control.clone(),
            id: id.clone(),
            ttl: config.sandbox_timeout,
            attached: !owned,
        };
        Ok(Self {
            id,
            runner: Arc::new(E2bRunner {
                envd: Arc::new(envd),
            }),
            control: Some(control),
            owned,
            renewals: Some(tokio::spawn(renew.run())),
        })
    }

    /// The sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The runner into this sandbox.
    pub fn runner(&self) -> Arc<E2bRunner> {
        self.runner.clone()
    }

    /// Stops renewing; kills the sandbox if we created it.
    pub async fn close(mut self) -> Result<(), E2bError> {
        if let Some(renewals) = self.renewals.take() {
            renewals.abort();
        }
        match (&self.control, self.owned) {
            (Some(control), true) => {
                control.kill(&self.id).await?;
                tracing::info!(sandbox = %self.id, "killed the E2B sandbox");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Drop for E2bSandbox {
    fn drop(&mut self) {
        if let Some(renewals) = self.renewals.take() {
            renewals.abort();
        }
    }
}

/// Keeps the sandbox alive while the bridge runs, renewing at a third of its time to live
/// so two renewals may fail in a row before E2B ends it.
struct Renewal {
    control: Control,
    id: String,
    ttl: std::time::Duration,
    /// An attached sandbox is renewed through `connect`, which only ever extends its life
    /// (setting the timeout could cut short a sandbox its owner gave longer).
    attached: bool,
}

impl Renewal {
    async fn run(self) {
        let every = (self.ttl / 3).max(std::time::Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let renewed = if self.attached {
                self.control.connect(&self.id, self.ttl).await.map(drop)
            } else {
                self.control.set_timeout(&self.id, self.ttl).await
            };
            match renewed {
                Ok(()) => {}
                Err(E2bError::Status { status: 404, .. }) => {
                    tracing::error!(sandbox = %self.id, "the E2B sandbox is gone; no more renewals");
                    return;
                }
                Err(e) => {
                    tracing::warn!(sandbox = %self.id, error = %e, "could not renew the E2B sandbox's time to live");
                }
            }
        }
    }
}
