//! `paperclip-bridge run` and `up`: sandbox + bridge (+ agent), torn down on every exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bridge_host::deploy::{Bridge, BridgeConfig, BridgeHandle, GatewayBinaries, GATEWAY_FILE_NAME};
use bridge_host::runner::{ExitStatus, Process, Signal, Spawn};
use bridge_host::transport::TransportKind;
use clap::Args;

use crate::agent_env::agent_env;
use crate::args::{
    GatewayBinArg, PolicyArgs, SandboxArgs, SandboxKind, TransportArg, UpstreamArgs,
};
use crate::sandbox::Sandbox;
use crate::signals::Shutdown;

/// How long the agent gets to exit after TERM before it is killed.
const AGENT_GRACE: Duration = Duration::from_secs(5);

/// Options of the bridge itself.
#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub gateway: GatewayBinArg,
    /// How long an agent's call may wait for its answer, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub response_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub bridge: BridgeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// Pass this host variable to the agent (repeatable). Secret-looking names are refused.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Pass this host variable to the agent even though it looks like a secret.
    #[arg(long = "pass-secret-env", value_name = "NAME")]
    pub pass_secret_env: Vec<String>,
    /// The agent command, run inside the sandbox.
    #[arg(last = true, required = true, value_name = "AGENT_CMD")]
    pub agent: Vec<String>,
}

/// `run`: the agent's exit status becomes ours.
pub async fn run(args: RunArgs, mut shutdown: Shutdown) -> Result<ExitCode> {
    let (sandbox, bridge) = start(&args.up, &mut shutdown).await?;
    let outcome = run_agent(&args, &sandbox, &bridge, shutdown).await;
    teardown(sandbox, bridge).await;
    outcome
}

/// `up`: print the agent environment as one JSON line and serve until a signal.
pub async fn up(args: UpArgs, mut shutdown: Shutdown) -> Result<ExitCode> {
    let (sandbox, bridge) = start(&args, &mut shutdown).await?;
    let env: serde_json::Map<String, serde_json::Value> = bridge
        .agent_env()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    println!("{}", serde_json::Value::Object(env));
    tracing::info!("serving; stop with Ctrl-C or SIGTERM");
    let failed = tokio::select! {
        _ = shutdown.recv() => None,
        e = bridge.failed() => Some(e),
    };
    teardown(sandbox, bridge).await;
    match failed {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => Err(anyhow::Error::new(e).context("the bridge failed")),
    }
}

/// Opens the sandbox and deploys the bridge into it; on a failure or a signal meanwhile,
/// closes the sandbox again (a created E2B sandbox must not outlive the command).
async fn start(args: &UpArgs, shutdown: &mut Shutdown) -> Result<(Sandbox, BridgeHandle)> {
    let mut config_without_dir = bridge_config(args, PathBuf::new())?;
    config_without_dir.worker.metrics =
        crate::metrics_server::serve(args.policy.metrics_listen).await?;
    // Making the sandbox is bounded and not interrupted: a create cut short could leave
    // a provider's sandbox that we hold no id of.
    let sandbox = Sandbox::open(&args.sandbox).await?;
    let mut config = config_without_dir;
    config.sandbox_dir = sandbox.workdir.clone();
    let deployed = match transport(args.policy.transport, &sandbox) {
        Ok(kind) => {
            config.transport = kind;
            tokio::select! {
                started = Bridge::start(sandbox.runner.clone(), config) => {
                    started.context("deploying the bridge into the sandbox")
                }
                signal = shutdown.recv() => Err(anyhow::anyhow!("{signal} during deployment")),
            }
        }
        Err(e) => Err(e),
    };
    match deployed {
        Ok(bridge) => Ok((sandbox, bridge)),
        Err(e) => {
            sandbox.close().await;
            Err(e)
        }
    }
}

async fn teardown(sandbox: Sandbox, bridge: BridgeHandle) {
    if let Err(e) = bridge.stop().await {
        tracing::warn!(error = %bridge_protocol::shown_error(&e), "stopping the bridge");
    }
    sandbox.close().await;
}

fn bridge_config(args: &UpArgs, sandbox_dir: PathBuf) -> Result<BridgeConfig> {
    let upstream = args.upstream.upstream()?;
    let policy = args.policy.policy()?;
    let binaries = gateway_binaries(&args.bridge.gateway)?;
    let mut config = BridgeConfig::new(binaries, sandbox_dir, upstream);
    config.policy = Arc::new(policy);
    config.worker.concurrency = args.policy.concurrency.max(1);
    config.worker.response_timeout = Duration::from_millis(args.bridge.response_timeout_ms);
    if let Some(path) = &args.policy.audit_log {
        config.worker.audit = Some(
            bridge_host::audit::AuditLog::open(path)
                .with_context(|| format!("opening --audit-log {}", path.display()))?,
        );
    }
    Ok(config)
}

/// The transport `--transport` asks for, with the sandbox `sandbox` (`auto` picks).
pub fn transport(arg: TransportArg, sandbox: &Sandbox) -> Result<TransportKind> {
    let shared = sandbox.runner.capabilities().shared_fs;
    Ok(match arg {
        TransportArg::Stream => TransportKind::Stream,
        TransportArg::OneShot => TransportKind::OneShot,
        TransportArg::Posix => TransportKind::Posix,
        TransportArg::SharedFs if shared => TransportKind::SharedFs,
        TransportArg::SharedFs => {
            bail!("--transport shared-fs works only with --sandbox local")
        }
        TransportArg::Auto if shared && sandbox.kind == SandboxKind::Local => {
            TransportKind::SharedFs
        }
        TransportArg::Auto => TransportKind::Stream,
    })
}

/// Which gateway binaries there are: `--gateway-bin`, else a dist directory (the flag, or
/// `target/dist` found from this program), else the binary beside us. Deployment picks
/// the one for the sandbox's architecture.
pub fn gateway_binaries(given: &GatewayBinArg) -> Result<GatewayBinaries> {
    if let Some(path) = &given.gateway_bin {
        if !path.is_file() {
            bail!("gateway binary {} does not exist", path.display());
        }
        return Ok(GatewayBinaries::single(path.clone()));
    }
    if let Some(dir) = &given.gateway_dist {
        let found = GatewayBinaries::from_dist_dir(dir);
        if found.is_empty() {
            bail!(
                "no gateway binary in {} (looked for <arch>-unknown-linux-musl/{GATEWAY_FILE_NAME}): \
                 build them with `cargo xtask dist`",
                dir.display()
            );
        }
        return Ok(found);
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    let dir = exe.parent().context("this program has no folder")?;
    // target/<profile>/ and target/<triple>/<profile>/ both reach target/dist.
    let dist = [dir.join("../dist"), dir.join("../../dist")]
        .iter()
        .map(|d| GatewayBinaries::from_dist_dir(d))
        .find(|found| !found.is_empty());
    if let Some(found) = dist {
        return Ok(found);
    }
    let beside = dir.join(GATEWAY_FILE_NAME);
    if beside.is_file() {
        return Ok(GatewayBinaries::single(beside));
    }
    bail!("no gateway binary found: build it with `cargo xtask dist` or pass --gateway-bin PATH")
}

/// Runs the agent with live output and returns its exit status as ours.
async fn run_agent(
    args: &RunArgs,
    sandbox: &Sandbox,
    bridge: &BridgeHandle,
    mut shutdown: Shutdown,
) -> Result<ExitCode> {
    let env = agent_env(
        bridge.agent_env(),
        &args.pass_env,
        &args.pass_secret_env,
        |name| std::env::var(name).ok(),
    )?;
    let spawn = Spawn {
        script: format!("exec {}", bridge_host::shell::join(&args.agent)),
        env,
        cwd: Some(sandbox.workdir.clone()),
    };
    let mut agent = sandbox
        .runner
        .spawn(spawn)
        .await
        .context("starting the agent in the sandbox")?;
    let status = tokio::select! {
        status = agent.wait() => status.context("waiting for the agent")?,
        signal = shutdown.recv() => {
            tracing::warn!(signal, "stopping the agent");
            terminate(agent.as_mut()).await?
        }
        e = bridge.failed() => {
            // The agent cannot get answers any more: end the run with the bridge's error.
            tracing::error!("the bridge failed; stopping the agent");
            terminate(agent.as_mut()).await?;
            return Err(anyhow::Error::new(e).context("the bridge failed"));
        }
    };
    Ok(exit_code(status))
}

/// TERM, then KILL after a grace.
async fn terminate(agent: &mut dyn Process) -> Result<ExitStatus> {
    // If TERM cannot be sent, the grace runs out and KILL follows: never skip the bound.
    if let Err(e) = agent.signal(Signal::Terminate) {
        tracing::warn!(error = %e, "could not send TERM to the agent");
    }
    match tokio::time::timeout(AGENT_GRACE, agent.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            agent.kill();
            Ok(agent.wait().await?)
        }
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code, status.signal) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        _ => ExitCode::FAILURE,
    }
}
