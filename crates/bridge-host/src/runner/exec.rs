//! Running one local process to completion: stdin written while stdout and stderr are
//! read (no pipe deadlock), the whole bounded by a timeout that kills the process group.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

use super::{ExecOutput, RunnerError};

/// After the process exits, how long to wait for its pipes to close (a background
/// grandchild may hold them open).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// The only host variables a sandbox process starts with; everything else it gets is
/// what the caller passes. Keeps the host's secrets (e.g. Paperclip's run JWT) out.
pub fn base_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    vec![("PATH".into(), path), ("LANG".into(), "C.UTF-8".into())]
}

/// Prefixes `script` with a `cd` into `cwd` (exit 125 if it is missing).
pub fn with_cwd(script: &str, cwd: Option<&std::path::Path>) -> String {
    match cwd {
        Some(dir) => format!(
            "cd {} || exit 125\n{script}",
            crate::shell::quote(&dir.to_string_lossy())
        ),
        None => script.to_owned(),
    }
}

/// Runs `command` with `stdin`, collecting its output, killed after `timeout`.
pub async fn run(
    mut command: Command,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<ExecOutput, RunnerError> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = command
        .spawn()
        .map_err(|source| RunnerError::Spawn { program, source })?;
    let mut input = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(pipe) = input.as_mut() {
            // A script that does not read its stdin closes the pipe early: not an error.
            let _ = pipe.write_all(&stdin).await;
            let _ = pipe.shutdown().await;
        }
    });
    let stdout = tokio::spawn(read_all(child.stdout.take()));
    let stderr = tokio::spawn(read_all(child.stderr.take()));
    let (code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status?.code(), false),
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            (None, true)
        }
    };
    writer.abort();
    Ok(ExecOutput {
        code,
        stdout: drain(stdout).await,
        stderr: drain(stderr).await,
        timed_out,
    })
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

async fn drain(reader: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = reader.abort_handle();
    match tokio::time::timeout(PIPE_DRAIN, reader).await {
        Ok(Ok(bytes)) => bytes,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

/// Kills the whole process group (the script and what it started). `kill` the command,
/// because this crate forbids `unsafe` and so calls no libc.
pub fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}
