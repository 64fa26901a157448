//! Running one local process to completion: stdin written while stdout and stderr are
//! read (no pipe deadlock), the whole bounded by a timeout that kills the process group.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

use super::{BoxFuture, ExecOutput, ExecStream, ExitStatus, Process, RunnerError, Signal};

/// After the process exits, how long to wait for its pipes to close (a background
/// grandchild may hold them open).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// Most bytes kept of an exec's stdout; the rest is dropped, so a rogue program in the
/// sandbox costs the host at most this much. The largest honest output, a take batch
/// (16 MiB by default, plus one item up to the envelope limit) in base64, is well below.
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// Most bytes kept of an exec's stderr: it only ever carries error messages.
pub const MAX_ERROR_OUTPUT: usize = 1024 * 1024;

/// The only host variables a sandbox process starts with; everything else it gets is
/// what the caller passes. Keeps the host's secrets (e.g. Paperclip's run JWT) out.
pub(crate) fn base_env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), sandbox_path()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// The host's PATH plus the system directories an ordinary user's PATH may lack (`ip`,
/// `nsenter` and `unshare` live in sbin on many systems).
pub(crate) fn sandbox_path() -> String {
    let mut dirs: Vec<String> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_owned());
        }
    }
    dirs.join(":")
}

/// `<prefix...> sh -c <script>` with a cleared environment plus [`base_env`]: how every
/// local runner starts a sandbox shell (the caller adds the exec's own variables).
pub(crate) fn sh_command(prefix: &[&str], script: String) -> Command {
    let (program, args) = match prefix.split_first() {
        Some((program, args)) => (*program, args),
        None => ("sh", &[][..]),
    };
    let mut command = Command::new(program);
    command.args(args);
    if !prefix.is_empty() {
        command.arg("sh");
    }
    command.arg("-c").arg(script).env_clear().envs(base_env());
    command
}

/// Prefixes `script` with a `cd` into `cwd` (exit 125 if it is missing).
pub(crate) fn with_cwd(script: &str, cwd: Option<&std::path::Path>) -> String {
    match cwd {
        Some(dir) => format!(
            "cd {} || exit 125\n{script}",
            crate::shell::quote(&dir.to_string_lossy())
        ),
        None => script.to_owned(),
    }
}

/// Runs `command` with `stdin`, collecting its output, killed after `timeout`.
pub(crate) async fn run(
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
    let mut child = spawn(&mut command)?;
    let mut input = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(pipe) = input.as_mut() {
            // A script that does not read its stdin closes the pipe early: not an error.
            let _ = pipe.write_all(&stdin).await;
            let _ = pipe.shutdown().await;
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stdout = tokio::spawn(read_all(child.stdout.take(), stopped.clone(), MAX_OUTPUT));
    let stderr = tokio::spawn(read_all(child.stderr.take(), stopped, MAX_ERROR_OUTPUT));
    let (code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status?.code(), false),
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            (None, true)
        }
    };
    writer.abort();
    // A detached grandchild may hold the pipes open: keep what was read, stop waiting.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(PIPE_DRAIN).await;
        let _ = stop.send(true);
        // Keep the sender alive so readers see the signal, not a closed channel.
        std::future::pending::<()>().await;
    });
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    stopper.abort();
    Ok(ExecOutput {
        code,
        stdout,
        stderr,
        timed_out,
    })
}

/// Starts `command` with all three standard streams piped, as an [`ExecStream`].
pub(crate) fn open_stream(command: Command) -> Result<ExecStream, RunnerError> {
    piped(command, |child| Box::new(LocalProcess(child)))
}

/// Like [`open_stream`], for a `command` started in a process group of its own
/// (`process_group(0)`): signals go to the whole group, so they reach what a wrapper
/// such as `nsenter` forked.
pub(crate) fn open_grouped_stream(command: Command) -> Result<ExecStream, RunnerError> {
    piped(command, |child| Box::new(GroupLeader(LocalProcess(child))))
}

fn piped(
    mut command: Command,
    process: impl FnOnce(tokio::process::Child) -> Box<dyn Process>,
) -> Result<ExecStream, RunnerError> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = spawn(&mut command)?;
    let missing = || RunnerError::Io(std::io::Error::other("a piped stream is missing"));
    Ok(ExecStream {
        stdin: Box::pin(child.stdin.take().ok_or_else(missing)?),
        stdout: Box::pin(child.stdout.take().ok_or_else(missing)?),
        stderr: Box::pin(child.stderr.take().ok_or_else(missing)?),
        process: process(child),
    })
}

/// Starts `command` as an agent: an empty stdin (or, with `stdin`, these bytes and then its
/// end), and this process's own stdout and stderr, so the agent's output is live and a
/// terminal stays a terminal.
pub(crate) fn spawn_inherited(
    mut command: Command,
    stdin: Option<Vec<u8>>,
) -> Result<Box<dyn Process>, RunnerError> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = spawn(&mut command)?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // The block is small; a script that does not read it closes the pipe: fine.
            let _ = pipe.write_all(&bytes).await;
        });
    }
    Ok(Box::new(LocalProcess(child)))
}

/// A process on this machine (the local `sh`, an exec prefix's client, `nsenter`); killed
/// when dropped.
#[derive(Debug)]
pub(crate) struct LocalProcess(tokio::process::Child);

impl Process for LocalProcess {
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus, RunnerError>> {
        Box::pin(async move {
            use std::os::unix::process::ExitStatusExt as _;
            let status = self.0.wait().await?;
            Ok(ExitStatus {
                code: status.code(),
                signal: status.signal(),
            })
        })
    }

    fn signal(&mut self, signal: Signal) -> Result<(), RunnerError> {
        match signal {
            Signal::Kill => Ok(self.0.start_kill()?),
            // `kill` the command: this crate forbids `unsafe` and so calls no libc.
            Signal::Terminate => match self.0.id() {
                Some(pid) => {
                    std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status()?;
                    Ok(())
                }
                None => Ok(()), // already reaped
            },
        }
    }
}

/// A [`LocalProcess`] leading a process group: signalled as a group.
#[derive(Debug)]
struct GroupLeader(LocalProcess);

impl Process for GroupLeader {
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus, RunnerError>> {
        self.0.wait()
    }

    fn signal(&mut self, signal: Signal) -> Result<(), RunnerError> {
        if let Some(pid) = self.0 .0.id() {
            let name = match signal {
                Signal::Terminate => "-TERM",
                Signal::Kill => "-KILL",
            };
            signal_group(name, pid);
        }
        self.0.signal(signal)
    }
}

/// Spawns `command`; a failure names the program.
pub(crate) fn spawn(command: &mut Command) -> Result<tokio::process::Child, RunnerError> {
    command.spawn().map_err(|source| RunnerError::Spawn {
        program: command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned(),
        source,
    })
}

/// Reads `pipe` to its end, until `stop` fires, or until `limit` bytes (the sandbox is
/// untrusted: it must not exhaust the host's memory). Keeps what was read.
async fn read_all<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    limit: usize,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    let Some(mut pipe) = pipe else {
        return bytes;
    };
    let mut chunk = vec![0u8; 64 * 1024];
    while bytes.len() < limit {
        tokio::select! {
            read = pipe.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            },
            _ = stop.changed() => break,
        }
    }
    bytes.truncate(limit);
    bytes
}

/// Kills the whole process group (the script and what it started). `kill` the command,
/// because this crate forbids `unsafe` and so calls no libc.
pub(crate) fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        signal_group("-KILL", pid);
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to the process group `pid` leads.
fn signal_group(signal: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}
