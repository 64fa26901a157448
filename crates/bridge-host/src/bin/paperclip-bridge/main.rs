//! paperclip-bridge: run agents in sandboxes whose only way to the Paperclip API is the
//! bridge, which holds the real credential on this side.

mod agent_env;
mod args;
mod delay_exec;
mod demo;
mod doctor;
mod metrics_server;
mod policy_cmd;
mod run;
mod sandbox;
mod signals;
mod worker_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Paperclip sandbox bridge (host side).
#[derive(Debug, Parser)]
#[command(name = "paperclip-bridge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create (or reach) a sandbox, deploy the bridge, run AGENT_CMD inside it with the
    /// bridge's environment, stream its output, exit with its status, tear down.
    Run(Box<run::RunArgs>),
    /// Like `run` without an agent: print the agent environment as one JSON line and serve
    /// until SIGINT/SIGTERM.
    Up(Box<run::UpArgs>),
    /// Only the host worker: for a gateway someone else started (e.g. Paperclip's own), or
    /// to re-attach to a deployment of ours whose host process is gone (`--attach`).
    Worker(Box<worker_cmd::WorkerArgs>),
    /// Everything local: a sandbox, the bridge, a demo upstream and a scripted agent.
    Demo(demo::DemoArgs),
    /// Run a command as if over a remote exec: add a round-trip delay to its start and to
    /// its stdin and output. An exec prefix for measuring how the bridge behaves over your
    /// provider's latency: `--exec 'paperclip-bridge delay-exec --delay-ms 25 -- PREFIX...'`.
    DelayExec(delay_exec::DelayExecArgs),
    /// Check that this machine can run the set-up these flags describe: the sandbox's
    /// programs, user namespaces, the gateway binary, the API URL, and a deployment end to
    /// end. Prints each check (with a fix for a failure); exits 0 when none failed.
    Doctor(Box<doctor::DoctorArgs>),
    /// The policy as a file: `show` the effective one, `check` one (see docs/policy.md).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// The demo's scripted agent (runs inside the sandbox).
    #[command(hide = true)]
    DemoAgent(demo::DemoAgentArgs),
    /// The doctor's probe (runs inside the sandbox).
    #[command(hide = true)]
    DoctorProbe(doctor::DoctorProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr: stdout belongs to `up`'s JSON line and the agent.
    bridge_server::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paperclip-bridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // A blocking read of stdin (delay-exec's) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            // An error may quote the sandbox (a script's stderr): bounded and escaped.
            let error = bridge_protocol::shown_error(&format_args!("{e:#}"));
            eprintln!("paperclip-bridge: error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::DemoAgent(args) => return demo::agent(args).await,
        Command::DoctorProbe(args) => return doctor::probe(args).await,
        Command::DelayExec(args) => return delay_exec::delay_exec(args).await,
        Command::Policy(command) => return policy_cmd::policy(command),
        _ => {}
    }
    let shutdown = signals::Shutdown::install()?;
    match command {
        Command::Run(args) => run::run(*args, shutdown).await,
        Command::Up(args) => run::up(*args, shutdown).await,
        Command::Worker(args) => worker_cmd::worker(*args, shutdown).await,
        Command::Demo(args) => demo::demo(args, shutdown).await,
        Command::Doctor(args) => doctor::doctor(*args, shutdown).await,
        Command::DemoAgent(_)
        | Command::DoctorProbe(_)
        | Command::DelayExec(_)
        | Command::Policy(_) => {
            unreachable!("handled above")
        }
    }
}
