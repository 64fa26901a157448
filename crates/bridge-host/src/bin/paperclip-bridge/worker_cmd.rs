//! `paperclip-bridge worker`: serve a queue whose gateway someone else started.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bridge_host::deploy::BridgeConfig;
use bridge_host::runner::{CommandRunner, LocalRunner, Runner};
use bridge_host::transport::{self, TransportKind};
use bridge_host::worker::{Worker, WorkerConfig};
use clap::Args;

use crate::args::{PolicyArgs, TransportArg, UpstreamArgs};
use crate::signals::Shutdown;

/// Bound for each exec into the sandbox.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
#[group(id = "queue", required = true, args = ["queue_dir", "attach"])]
pub struct WorkerArgs {
    /// A foreign gateway's queue directory (as the sandbox sees it), served with POSIX sh
    /// scripts.
    #[arg(long, value_name = "DIR")]
    pub queue_dir: Option<PathBuf>,
    /// Re-attach to the bridge `run`/`up` deployed into this sandbox directory (its
    /// `--workdir`), e.g. after the host process died: the running gateway, its token and
    /// its queue are kept; claimed unsafe requests get the indeterminate outcome.
    #[arg(long, value_name = "DIR", conflicts_with = "queue_dir")]
    pub attach: Option<PathBuf>,
    /// Reach the sandbox through this exec prefix.
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
    let runner: Arc<dyn Runner> = match (&args.exec, args.shared_fs) {
        (Some(prefix), false) => Arc::new(
            CommandRunner::parse(prefix)
                .with_context(|| format!("--exec {prefix:?}"))?
                // Paperclip's variable for the real key: no provider's client needs it.
                .hide_env("PAPERCLIP_API_KEY"),
        ),
        (None, true) => Arc::new(LocalRunner),
        _ => bail!("say how to reach the queue: --exec PREFIX or --shared-fs"),
    };
    let (kind, queue_dir, binary) = queue(&args)?;
    let transport = transport::build(kind, runner, queue_dir.clone(), binary, EXEC_TIMEOUT, None);
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
        metrics: crate::metrics_server::serve(args.policy.metrics_listen).await?,
        ..WorkerConfig::default()
    };
    let handle = Worker::spawn(transport, upstream, policy, config);
    tracing::info!(queue = %queue_dir.display(), "worker serving; stop with Ctrl-C or SIGTERM");
    let signal = shutdown.recv().await;
    tracing::info!(signal, "stopping the worker");
    handle.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The transport, the queue directory and our gateway binary's path in the sandbox (empty
/// for a foreign gateway, which has none).
fn queue(args: &WorkerArgs) -> Result<(TransportKind, PathBuf, PathBuf)> {
    if let Some(dir) = &args.attach {
        let kind = match (args.policy.transport, args.shared_fs) {
            (TransportArg::Auto | TransportArg::SharedFs, true) => TransportKind::SharedFs,
            (TransportArg::SharedFs, false) => bail!("--transport shared-fs needs --shared-fs"),
            (TransportArg::Auto | TransportArg::Stream, _) => TransportKind::Stream,
            (TransportArg::OneShot, _) => TransportKind::OneShot,
            (TransportArg::Posix, _) => TransportKind::Posix,
        };
        let queue = BridgeConfig::queue_dir_in(dir);
        return Ok((kind, queue, BridgeConfig::remote_binary_in(dir)));
    }
    let queue = args
        .queue_dir
        .clone()
        .context("--queue-dir DIR or --attach DIR")?;
    // A foreign gateway: no binary of ours to run in the sandbox.
    let kind = match (args.policy.transport, args.shared_fs) {
        (TransportArg::Auto | TransportArg::SharedFs, true) => TransportKind::SharedFs,
        (TransportArg::Auto | TransportArg::Posix, false) => TransportKind::Posix,
        _ => bail!("a foreign gateway's queue is served with --transport posix or shared-fs"),
    };
    Ok((kind, queue, PathBuf::new()))
}
