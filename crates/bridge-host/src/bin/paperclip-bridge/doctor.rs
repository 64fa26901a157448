//! `paperclip-bridge doctor`: can this machine run the set-up the flags describe?
//!
//! Each check prints one line, `ok|FAIL|skip  <name>: <detail>`, and under a failure an
//! indented `fix:` line; the exit status is 0 when no check failed. Every check has a
//! bound, so the doctor never hangs: it is what a user runs when something does not work.

mod api;
mod e2e;
mod gateway;
mod probe;
mod system;

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::args::{GatewayBinArg, SandboxArgs, TransportArg};
use crate::signals::Shutdown;

pub use probe::{probe, DoctorProbeArgs};

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub gateway: GatewayBinArg,
    /// The Paperclip API base URL to check (without /api); no URL skips that check.
    #[arg(long, value_name = "URL")]
    #[arg(env = "PAPERCLIP_API_URL", hide_env_values = true)]
    pub api_url: Option<String>,
    /// How the worker reaches the queue in the end-to-end check.
    #[arg(long, value_enum, default_value = "auto")]
    pub transport: TransportArg,
}

/// What one check found.
#[derive(Debug)]
pub enum Outcome {
    Ok(String),
    Fail { detail: String, fix: String },
    Skip(String),
}

impl Outcome {
    fn fail(detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Fail {
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    fn failed(&self) -> bool {
        matches!(self, Self::Fail { .. })
    }
}

pub async fn doctor(args: DoctorArgs, mut shutdown: Shutdown) -> Result<ExitCode> {
    let mut failures = 0;
    let mut report = |name: &str, outcome: &Outcome| {
        print_line(name, outcome);
        failures += usize::from(outcome.failed());
    };
    let tools = system::tools(&args.sandbox);
    report("tools", &tools);
    let userns = system::user_namespaces(&args.sandbox, tools.failed()).await;
    report("user namespaces", &userns);
    let (gateway, binary) = gateway::check(&args);
    report("gateway binary", &gateway);
    report("api url", &api::check(args.api_url.as_deref()).await);
    let e2e = match binary {
        _ if tools.failed() => Outcome::Skip("needs the tools above".into()),
        _ if userns.failed() => Outcome::Skip("needs the user namespaces above".into()),
        None => Outcome::Skip("needs the gateway binary above".into()),
        Some(binary) => e2e::check(&args, binary, &mut shutdown).await,
    };
    report("end to end", &e2e);
    if failures == 0 {
        eprintln!("doctor: every check passed");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("doctor: {failures} check(s) failed");
        Ok(ExitCode::FAILURE)
    }
}

fn print_line(name: &str, outcome: &Outcome) {
    use std::io::Write as _;
    // Details may quote the sandbox or a server (an error's text): bounded and escaped.
    let shown = |text: &str| bridge_protocol::shown_error(&text).to_string();
    match outcome {
        Outcome::Ok(detail) => println!("ok    {name}: {}", shown(detail)),
        Outcome::Skip(detail) => println!("skip  {name}: {}", shown(detail)),
        Outcome::Fail { detail, fix } => {
            println!("FAIL  {name}: {}", shown(detail));
            println!("      fix: {}", shown(fix));
        }
    }
    // Each line as it is known: the end-to-end check takes seconds.
    let _ = std::io::stdout().flush();
}

/// An error and its causes, as one line (reqwest's own text omits the cause).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
