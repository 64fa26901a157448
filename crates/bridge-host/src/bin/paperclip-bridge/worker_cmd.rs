//! `paperclip-bridge worker`: serve a queue whose gateway someone else started.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bridge_host::runner::{CommandRunner, LocalRunner, Runner};
use bridge_host::transport::{self, TransportKind};
use bridge_host::worker::{Worker, WorkerConfig};
use clap::Args;

use crate::args::{PolicyArgs, UpstreamArgs};
use crate::signals::Shutdown;

/// Bound for each exec into the sandbox.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The gateway's queue directory (as the sandbox sees it).
    #[arg(long, value_name = "DIR")]
    pub queue_dir: PathBuf,
    /// Reach the queue through this exec prefix (POSIX sh transport).
    #[arg(long, value_name = "PREFIX", conflicts_with = "shared_fs")]
    pub exec: Option<String>,
    /// The queue directory is on this machine's file system.
    #[arg(long)]
    pub shared_fs: bool,
    /// How long an agent's call may wait for its answer, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub response_timeout_ms: u64,
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub async fn worker(args: WorkerArgs, mut shutdown: Shutdown) -> Result<ExitCode> {
    let (kind, runner): (_, Arc<dyn Runner>) = match (&args.exec, args.shared_fs) {
        (Some(prefix), false) => {
            let runner = CommandRunner::parse(prefix)
                .with_context(|| format!("--exec {prefix:?}"))?
                // Paperclip's variable for the real key: no provider's client needs it.
                .hide_env("PAPERCLIP_API_KEY");
            (TransportKind::Posix, Arc::new(runner))
        }
        (None, true) => (TransportKind::SharedFs, Arc::new(LocalRunner)),
        _ => bail!("say how to reach the queue: --exec PREFIX or --shared-fs"),
    };
    // A foreign gateway: no binary of ours in the sandbox, so no path to give.
    let transport = transport::build(
        kind,
        runner,
        args.queue_dir.clone(),
        PathBuf::new(),
        EXEC_TIMEOUT,
    );
    let upstream = args.upstream.upstream()?;
    let policy = Arc::new(args.policy.policy()?);
    let audit = match &args.policy.audit_log {
        Some(path) => Some(
            bridge_host::audit::AuditLog::open(path)
                .with_context(|| format!("opening --audit-log {}", path.display()))?,
        ),
        None => None,
    };
    let config = WorkerConfig {
        concurrency: args.policy.concurrency.max(1),
        response_timeout: Duration::from_millis(args.response_timeout_ms),
        audit,
        ..WorkerConfig::default()
    };
    let handle = Worker::spawn(transport, upstream, policy, config);
    tracing::info!(queue = %args.queue_dir.display(), "worker serving; stop with Ctrl-C or SIGTERM");
    let signal = shutdown.recv().await;
    tracing::info!(signal, "stopping the worker");
    handle.stop().await;
    Ok(ExitCode::SUCCESS)
}
