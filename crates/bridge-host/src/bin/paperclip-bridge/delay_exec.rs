//! `delay-exec`: the exec-latency injector as an exec prefix, so any runner (and the CLI's
//! `--sandbox exec`) can be measured as if the sandbox were a hosted provider's:
//! `--exec 'paperclip-bridge delay-exec --delay-ms 25 -- nsenter -t PID -U -n -m'`.
//!
//! The command starts half the delay late, and its stdin and its output each arrive half
//! the delay late (pipelined, so bandwidth is not limited): a one-shot exec costs one
//! delay, and so does each message and answer on a long-lived exec.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use bridge_host::runner::delay_line;

/// How long, after the command exits, its output may still take to drain (a background
/// grandchild may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct DelayExecArgs {
    /// The round trip to add, in milliseconds (half on the way in, half on the way out).
    #[arg(long, value_name = "MS")]
    delay_ms: u64,
    /// The command to run, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn delay_exec(args: DelayExecArgs) -> Result<ExitCode> {
    let one_way = Duration::from_millis(args.delay_ms) / 2;
    tokio::time::sleep(one_way).await;
    let (program, rest) = args
        .command
        .split_first()
        .context("delay-exec needs a command after --")?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    if let Some(stdin) = child.stdin.take() {
        drop(delay_line(tokio::io::stdin(), stdin, one_way)); // ends with stdin
    }
    let stdout = child
        .stdout
        .take()
        .map(|out| delay_line(out, tokio::io::stdout(), one_way));
    let stderr = child
        .stderr
        .take()
        .map(|err| delay_line(err, tokio::io::stderr(), one_way));
    let status = child.wait().await.context("waiting for the command")?;
    for output in [stdout, stderr].into_iter().flatten() {
        let _ = tokio::time::timeout(DRAIN + one_way, output).await;
    }
    Ok(exit_code(status))
}

/// The command's exit code; 128 + the signal when it was killed, as a shell reports it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
