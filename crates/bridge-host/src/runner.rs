//! Runners: the one channel from the host into a sandbox, "run this shell script there".
//!
//! Every runner takes an [`Exec`] (script, stdin, environment, working directory, timeout)
//! and returns an [`ExecOutput`]. Secrets travel in `env` or `stdin`, never in the script
//! text or any argument list: `ps` shows argv to every user.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub mod bwrap;
pub mod command;
pub mod delay;
pub mod e2b;
mod exec;
pub mod memory;
mod spawned;

pub use bwrap::{find_program, BwrapSandbox, Mounts, Tool, ToolSide};
pub use command::{CommandRunner, LocalRunner};
pub use delay::{delay_line, DelayRunner};
pub use e2b::{E2bConfig, E2bError, E2bRunner, E2bSandbox};
pub use exec::{MAX_ERROR_OUTPUT, MAX_OUTPUT};
pub use memory::MemoryRunner;

/// The PATH the local runners (local, exec prefix, `nsenter`) start programs with: the
/// host's plus the system directories.
pub fn exec_path() -> String {
    exec::sandbox_path()
}

/// A boxed, sendable future, so runners can be used as `Arc<dyn Runner>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One script to run inside the sandbox.
#[derive(Clone)]
pub struct Exec {
    /// POSIX `sh` script text. Must hold no secret.
    pub script: String,
    /// Bytes for the script's standard input.
    pub stdin: Vec<u8>,
    /// Extra environment for the script; this is where secrets go.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: Option<PathBuf>,
    /// Upper bound for the whole exec; the script is killed after it.
    pub timeout: Duration,
}

impl fmt::Debug for Exec {
    // Values of `env` may be secrets: show the names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Exec")
            .field("script", &self.script)
            .field("stdin_bytes", &self.stdin.len())
            .field("env", &names)
            .field("cwd", &self.cwd)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Exec {
    /// A script with no stdin or environment, bounded by `timeout`.
    pub fn new(script: impl Into<String>, timeout: Duration) -> Self {
        Self {
            script: script.into(),
            stdin: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout,
        }
    }

    /// Sets the bytes for the script's standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Adds one environment variable (the place for secrets).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the working directory inside the sandbox.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
}

/// What an exec gave back.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit code; `None` when killed by a signal or on time-out.
    pub code: Option<i32>,
    /// Everything the script printed on stdout (bounded: the sandbox is untrusted).
    pub stdout: Vec<u8>,
    /// Everything the script printed on stderr (bounded likewise).
    pub stderr: Vec<u8>,
    /// The exec ran past its timeout and was killed.
    pub timed_out: bool,
}

impl ExecOutput {
    /// Exited with code 0 in time.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// stderr as lossy text, trimmed, for error messages.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// What a runner can do, declared rather than guessed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Can run a long process with live stdin/stdout/stderr ([`Runner::stream`]).
    pub streaming: bool,
    /// The sandbox's files are this machine's files (same paths). Only `LocalRunner`.
    pub shared_fs: bool,
    /// Can write a file into the sandbox through the provider's own file API
    /// ([`Runner::upload`]), cheaper than bytes through an exec's stdin.
    pub upload: bool,
}

/// Why an exec could not be carried out (a script that ran and failed is not an error:
/// see [`ExecOutput::code`]).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The local program that carries the exec could not be started.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program (e.g. `nsenter`, an exec prefix's client).
        program: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the exec's streams failed.
    #[error("i/o with the exec process failed: {0}")]
    Io(#[from] std::io::Error),
    /// The sandbox no longer exists (destroyed, or its holder died).
    #[error("the sandbox is gone: {0}")]
    SandboxGone(String),
    /// The exec was not well formed (an empty prefix, an invalid variable name).
    #[error("{0}")]
    Invalid(String),
    /// [`Runner::stream`] on a runner that cannot stream.
    #[error("this runner cannot stream")]
    NoStreaming,
    /// [`Runner::upload`] on a runner without a file API.
    #[error("this runner has no file upload")]
    NoUpload,
    /// A provider's API refused or failed a call (E2B's control plane, envd).
    #[error("{message}")]
    Provider {
        /// Another attempt may succeed (the network, a 5xx, a cut stream).
        transient: bool,
        /// The call that failed and what came back, bounded and escaped.
        message: String,
    },
}

impl RunnerError {
    /// The channel failed in a way another attempt may not meet again: the local client
    /// could not start or its pipes broke, or the provider's API had a passing fault.
    pub fn transient(&self) -> bool {
        match self {
            Self::Spawn { .. } | Self::Io(_) => true,
            Self::Provider { transient, .. } => *transient,
            Self::SandboxGone(_) | Self::Invalid(_) | Self::NoStreaming | Self::NoUpload => false,
        }
    }
}

/// A long-running script to start in the sandbox ([`Runner::stream`], [`Runner::spawn`]).
#[derive(Debug)]
pub struct Spawn {
    /// POSIX `sh` script text. Must hold no secret.
    pub script: String,
    /// Extra environment for the script; this is where secrets go.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: Option<PathBuf>,
}

/// How a sandbox process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Signals the host sends to sandbox processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ask it to stop (SIGTERM).
    Terminate,
    /// Stop it now (SIGKILL).
    Kill,
}

/// A process running in the sandbox, started by [`Runner::stream`] or [`Runner::spawn`].
/// Whatever carries it (a local child, a provider's HTTP API) stays the runner's business.
/// Dropping it kills the process (best effort).
pub trait Process: Send + Sync + fmt::Debug {
    /// Waits for the process to end.
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus, RunnerError>>;

    /// Sends `signal` without waiting for its effect.
    fn signal(&mut self, signal: Signal) -> Result<(), RunnerError>;

    /// Kills the process, best effort, without waiting.
    fn kill(&mut self) {
        let _ = self.signal(Signal::Kill);
    }
}

/// A long-lived exec with live standard streams ([`Runner::stream`]): one exec that
/// carries any number of messages, the streaming transport's channel.
pub struct ExecStream {
    /// The process's standard input.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// The process's standard output.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// The process's standard error.
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// The process itself.
    pub process: Box<dyn Process>,
}

impl fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecStream")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

/// The host's way into one sandbox.
pub trait Runner: Send + Sync + fmt::Debug {
    /// Runs one script to completion (or its timeout).
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>>;

    /// Starts a long-running script with piped stdin, stdout and stderr; only when
    /// `capabilities().streaming` (else [`RunnerError::NoStreaming`]).
    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>>;

    /// Starts a long-running script (an agent) with an empty stdin whose output becomes
    /// this process's stdout and stderr, as it comes. Built on [`Runner::stream`].
    fn spawn(&self, spawn: Spawn) -> BoxFuture<'_, Result<Box<dyn Process>, RunnerError>> {
        Box::pin(async move { Ok(spawned::forward_output(self.stream(spawn).await?)) })
    }

    /// Writes `bytes` to `path` in the sandbox through the provider's file API; only when
    /// `capabilities().upload` (else [`RunnerError::NoUpload`]). The file may be seen by
    /// the sandbox's code before it is complete: write under a temporary name and check it.
    fn upload(&self, path: PathBuf, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), RunnerError>> {
        let _ = (path, bytes);
        Box::pin(async { Err(RunnerError::NoUpload) })
    }

    /// What this runner can do.
    fn capabilities(&self) -> Capabilities;
}
