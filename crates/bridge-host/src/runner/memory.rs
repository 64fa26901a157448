//! A runner with no process at all: its "sandbox" is a table of programs, async Rust
//! functions keyed by the exact script text they stand for.
//!
//! The bridge only ever sends constant scripts (their inputs travel in the environment
//! and stdin), so a table keyed by script is a faithful model of a sandbox that has those
//! programs. [`MemoryRunner::with_queue_ops`] installs the gateway binary's queue
//! operations, run in process on a queue directory of this machine, so the stream and
//! one-shot transports work over it unchanged. It proves the transports depend on the
//! [`Runner`] contract only, and serves orchestrators' tests that want no sandbox.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::layout::QueueLayout;
use bridge_protocol::ops::TakeOptions;
use bridge_server::ops;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::task::JoinHandle;

use super::exec::{MAX_ERROR_OUTPUT, MAX_OUTPUT};
use super::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, ExitStatus, Process, Runner,
    RunnerError, Signal, Spawn,
};

/// Exit code of a script the sandbox has no program for (as `sh` says "not found").
pub const NOT_FOUND: i32 = 127;
/// The "signal" a killed program reports.
const KILLED: i32 = 9;
/// Bytes buffered in each in-memory pipe.
const PIPE_BYTES: usize = 64 * 1024;

/// One run of a program: what a process would get.
pub struct Invocation {
    /// The environment the caller passed (nothing else: the sandbox starts clean).
    pub env: HashMap<String, String>,
    /// The working directory the caller asked for.
    pub cwd: Option<PathBuf>,
    /// Standard input.
    pub stdin: Pin<Box<dyn AsyncRead + Send>>,
    /// Standard output.
    pub stdout: Pin<Box<dyn AsyncWrite + Send>>,
    /// Standard error.
    pub stderr: Pin<Box<dyn AsyncWrite + Send>>,
}

impl fmt::Debug for Invocation {
    // Values of `env` may be secrets: show the names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invocation")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

/// A program: runs with an [`Invocation`] and returns its exit code.
pub type Program = Arc<dyn Fn(Invocation) -> BoxFuture<'static, i32> + Send + Sync>;

/// The in-memory runner.
#[derive(Clone, Default)]
pub struct MemoryRunner {
    programs: HashMap<String, Program>,
}

impl fmt::Debug for MemoryRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRunner")
            .field("programs", &self.programs.len())
            .finish()
    }
}

impl MemoryRunner {
    /// A sandbox with no programs: every script exits [`NOT_FOUND`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the program that `script` runs.
    pub fn with_program<F, Fut>(mut self, script: impl Into<String>, program: F) -> Self
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = i32> + Send + 'static,
    {
        let program: Program = Arc::new(move |invocation| Box::pin(program(invocation)));
        self.programs.insert(script.into(), program);
        self
    }

    /// Adds the gateway binary's queue operations: the scripts of the stream transport
    /// (`session`) and of the one-shot transport (`take`, `put`), run in process on the
    /// queue directory they name (`$Q`).
    pub fn with_queue_ops(self) -> Self {
        use crate::transport::{oneshot, stream};
        self.with_program(stream::SESSION, |mut run| async move {
            let layout = queue(&run);
            let served = ops::session::serve(layout, run.stdin, run.stdout).await;
            exit_code(served, &mut run.stderr).await
        })
        .with_program(oneshot::TAKE, |mut run| async move {
            let taken = match take_options(&run.env) {
                Some(opts) => ops::oneshot::take(&queue(&run), &opts, run.stdout).await,
                None => Err(std::io::Error::other("take: bad options")),
            };
            exit_code(taken, &mut run.stderr).await
        })
        .with_program(oneshot::PUT, |mut run| async move {
            let put = ops::oneshot::put(&queue(&run), run.stdin, run.stdout).await;
            exit_code(put, &mut run.stderr).await
        })
    }

    /// Starts the program for `script` on in-memory pipes.
    fn start(&self, script: &str, env: Vec<(String, String)>, cwd: Option<PathBuf>) -> Started {
        let (stdin, program_stdin) = tokio::io::duplex(PIPE_BYTES);
        let (program_stdout, stdout) = tokio::io::duplex(PIPE_BYTES);
        let (program_stderr, stderr) = tokio::io::duplex(PIPE_BYTES);
        let invocation = Invocation {
            env: env.into_iter().collect(),
            cwd,
            stdin: Box::pin(program_stdin),
            stdout: Box::pin(program_stdout),
            stderr: Box::pin(program_stderr),
        };
        let task = match self.programs.get(script) {
            Some(program) => tokio::spawn(program(invocation)),
            None => tokio::spawn(not_found(invocation)),
        };
        Started {
            stdin,
            stdout,
            stderr,
            task,
        }
    }
}

/// A started program and the host's ends of its pipes.
struct Started {
    stdin: DuplexStream,
    stdout: DuplexStream,
    stderr: DuplexStream,
    task: JoinHandle<i32>,
}

impl Runner for MemoryRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            let Started {
                mut stdin,
                stdout,
                stderr,
                task,
            } = self.start(&exec.script, exec.env, exec.cwd);
            let input = exec.stdin;
            let writer = tokio::spawn(async move {
                // A program that does not read its stdin closes the pipe early: not an error.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            });
            let stdout = read_bounded(stdout, MAX_OUTPUT);
            let stderr = read_bounded(stderr, MAX_ERROR_OUTPUT);
            let program = task.abort_handle();
            let collected = async { tokio::join!(task, stdout, stderr) };
            let outcome = tokio::time::timeout(exec.timeout, collected).await;
            writer.abort();
            program.abort(); // past its time-out, as a local exec's process group is killed
            Ok(match outcome {
                Ok((code, stdout, stderr)) => ExecOutput {
                    code: code.ok(),
                    stdout,
                    stderr,
                    timed_out: false,
                },
                Err(_) => ExecOutput {
                    timed_out: true,
                    ..ExecOutput::default()
                },
            })
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            let started = self.start(&spawn.script, spawn.env, spawn.cwd);
            Ok(ExecStream {
                stdin: Box::pin(started.stdin),
                stdout: Box::pin(started.stdout),
                stderr: Box::pin(started.stderr),
                process: Box::new(MemoryProcess {
                    task: started.task,
                    ended: None,
                }),
            })
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: true,
            shared_fs: false,
            upload: false,
        }
    }
}

/// A running program.
#[derive(Debug)]
struct MemoryProcess {
    task: JoinHandle<i32>,
    ended: Option<ExitStatus>,
}

impl Process for MemoryProcess {
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus, RunnerError>> {
        Box::pin(async move {
            if let Some(status) = self.ended {
                return Ok(status);
            }
            let status = match (&mut self.task).await {
                Ok(code) => ExitStatus {
                    code: Some(code),
                    signal: None,
                },
                Err(_) => ExitStatus {
                    code: None,
                    signal: Some(KILLED),
                },
            };
            self.ended = Some(status);
            Ok(status)
        })
    }

    /// A program has no signal handlers: both signals end it at once.
    fn signal(&mut self, _signal: Signal) -> Result<(), RunnerError> {
        self.task.abort();
        Ok(())
    }
}

impl Drop for MemoryProcess {
    /// Releases the program's task, as a dropped local child is killed.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `sh` does with a command it cannot find.
async fn not_found(mut run: Invocation) -> i32 {
    let _ = run
        .stderr
        .write_all(b"memory runner: this sandbox has no program for that script\n")
        .await;
    NOT_FOUND
}

/// Everything a pipe carries, up to `limit` bytes (the rest is drained unread).
pub(super) async fn read_bounded(mut pipe: DuplexStream, limit: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = (&mut pipe).take(limit as u64).read_to_end(&mut bytes).await;
    let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
    bytes
}

fn queue(run: &Invocation) -> QueueLayout {
    QueueLayout::new(run.env.get("Q").cloned().unwrap_or_default())
}

/// The one-shot `take`'s options, as its script passes them.
fn take_options(env: &HashMap<String, String>) -> Option<TakeOptions> {
    let number = |name: &str| env.get(name)?.parse::<u64>().ok();
    Some(TakeOptions {
        wait: Duration::from_millis(number("WAIT_MS")?),
        max_batch_bytes: usize::try_from(number("MAX_BATCH")?).ok()?,
        envelope_limit: usize::try_from(number("ENVELOPE")?).ok()?,
        include_claimed: env.get("INCLUDE_CLAIMED").is_some_and(|v| v == "1"),
    })
}

/// 0 on success; else the error on stderr and 1, as the gateway binary does.
async fn exit_code(
    result: std::io::Result<()>,
    stderr: &mut Pin<Box<dyn AsyncWrite + Send>>,
) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = stderr.write_all(format!("{e}\n").as_bytes()).await;
            1
        }
    }
}
