//! Processes in an E2B sandbox as the runner contract wants them: envd's event stream
//! turned into stdout and stderr pipes and an exit status, and a stdin pipe turned into
//! `SendInput` calls (in order, one at a time, each carrying all that is waiting) and a
//! final `CloseStdin`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::envd::{Envd, Events};
use super::error::E2bError;
use super::wire::{
    CloseStdinRequest, EndEvent, ProcessConfig, Selector, SendInputRequest, SendSignalRequest,
    StartRequest,
};
use crate::runner::exec::{with_cwd, MAX_ERROR_OUTPUT, MAX_OUTPUT};
use crate::runner::memory::read_bounded;
use crate::runner::{
    BoxFuture, Exec, ExecOutput, ExecStream, ExitStatus, Process, RunnerError, Signal, Spawn,
};

/// Bytes buffered in each pipe between envd's calls and the caller.
const PIPE_BYTES: usize = 1024 * 1024;
/// Most stdin bytes one `SendInput` carries: envd writes each into a pipe of 64 KiB, so a
/// slow reader makes a big call slow, while small ones cost a round trip each.
const INPUT_CHUNK: usize = 256 * 1024;
/// The shell every script runs in.
const SHELL: &str = "/bin/sh";
/// Names the script keeps besides those the caller passes (in `__PCB_KEEP`).
const KEPT: &str = "PATH LANG PWD";
/// Runs first: unsets every variable envd's process started with (the sandbox user's
/// HOME, USER, the template's own) except those passed, as every runner's far side starts
/// from a cleared environment. Names only cross: no value is in an argument list.
const CLEAR_ENV: &str = r#"__pcb_k=" $__PCB_KEEP "
for __pcb_v in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
  case "$__pcb_k" in *" $__pcb_v "*) ;; *) unset "$__pcb_v" 2>/dev/null || true ;; esac
done
unset __pcb_v __pcb_k __PCB_KEEP
"#;

/// The script as envd runs it (the environment cleared first) and the variables with the
/// list of names to keep.
fn far_side(script: &str, env: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let keep = format!("{KEPT} {}", names.join(" "));
    let mut env = env.to_vec();
    env.push(("__PCB_KEEP".into(), keep));
    (format!("{CLEAR_ENV}{script}"), env)
}

/// How a process's stream ended.
#[derive(Debug, Clone)]
enum Ended {
    /// Its end event came.
    Status(ExitStatus),
    /// envd ended it at the deadline we set (`deadline_exceeded`).
    Deadline,
    /// The stream broke (cut, garbled, silent too long): the process's fate is unknown.
    Broken { transient: bool, message: String },
}

/// A started process: its pipes and the status its stream will report.
struct Running {
    envd: Arc<Envd>,
    pid: u32,
    stdin: Option<DuplexStream>,
    stdout: DuplexStream,
    stderr: DuplexStream,
    ended: watch::Receiver<Option<Ended>>,
    tasks: Tasks,
}

/// The pumps of one process, stopped when it is let go of (a timed-out exec, a dropped
/// stream): a hostile envd's keepalives must not keep them alive forever.
#[derive(Debug, Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts `script` and connects its pipes; `deadline` bounds its life inside the sandbox.
async fn start(
    envd: Arc<Envd>,
    script: &str,
    env: &[(String, String)],
    stdin: bool,
    deadline: Option<Duration>,
) -> Result<Running, E2bError> {
    let request = StartRequest {
        process: ProcessConfig {
            cmd: SHELL,
            args: vec!["-c", script],
            envs: env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        },
        stdin,
    };
    let (pid, events) = envd.start(&request, deadline).await?;
    let (stdout, out_end) = tokio::io::duplex(PIPE_BYTES);
    let (stderr, err_end) = tokio::io::duplex(PIPE_BYTES);
    let (report, ended) = watch::channel(None);
    let mut tasks = Tasks(vec![tokio::spawn(pump_output(
        events, out_end, err_end, report,
    ))]);
    let stdin = stdin.then(|| {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tasks
            .0
            .push(tokio::spawn(pump_input(envd.clone(), pid, theirs)));
        ours
    });
    Ok(Running {
        envd,
        pid,
        stdin,
        stdout,
        stderr,
        ended,
        tasks,
    })
}

/// Copies envd's events into the pipes until the end event, then reports how it ended.
/// The pipes close first, as a local process's do when it exits.
async fn pump_output(
    mut events: Events,
    mut stdout: DuplexStream,
    mut stderr: DuplexStream,
    report: watch::Sender<Option<Ended>>,
) {
    let ended = loop {
        let event = match events.next().await {
            Ok(Some(event)) => event,
            Ok(None) => break broken(false, "the process stream ended without an end event"),
            Err(e) if e.code() == Some("deadline_exceeded") => break Ended::Deadline,
            Err(e) => break broken(e.transient(), &e.to_string()),
        };
        if let Some(end) = event.end {
            break Ended::Status(exit_status(&end));
        }
        let Some(data) = event.data else { continue };
        let (pipe, text) = match (data.stdout, data.stderr) {
            (Some(text), _) => (&mut stdout, text),
            (None, Some(text)) => (&mut stderr, text),
            // PTY output: we never ask for a PTY.
            (None, None) => continue,
        };
        match base64::engine::general_purpose::STANDARD.decode(text) {
            // A reader that went away loses its output; the status still matters.
            Ok(bytes) => drop(pipe.write_all(&bytes).await),
            Err(_) => break broken(false, "envd sent output that is not base64"),
        }
    };
    drop((stdout, stderr));
    report.send_replace(Some(ended));
}

fn broken(transient: bool, message: &str) -> Ended {
    Ended::Broken {
        transient,
        message: message.to_owned(),
    }
}

/// envd's end event as an exit status: a code if it exited, else the signal.
fn exit_status(end: &EndEvent) -> ExitStatus {
    if end.exited {
        ExitStatus {
            code: Some(end.exit_code),
            signal: None,
        }
    } else {
        ExitStatus {
            code: None,
            signal: end.signal().or(Some(0)),
        }
    }
}

/// Sends what is written to the stdin pipe, in order; at its end, closes stdin. A failed
/// call drops the pipe, so the writer sees a broken pipe rather than silent loss.
async fn pump_input(envd: Arc<Envd>, pid: u32, mut from: DuplexStream) {
    let mut buf = vec![0u8; INPUT_CHUNK];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        let sent = if n == 0 {
            let close = CloseStdinRequest {
                process: Selector { pid },
            };
            envd.unary("envd CloseStdin", "CloseStdin", &close).await
        } else {
            let input = SendInputRequest::new(pid, &buf[..n]);
            envd.unary("envd SendInput", "SendInput", &input).await
        };
        if let Err(e) = sent {
            tracing::warn!(pid, error = %e, "stdin of an E2B process failed");
            return;
        }
        if n == 0 {
            return;
        }
    }
}

/// Sends `signal` to `pid` without waiting for it (the status comes through the stream).
fn send_signal(envd: &Arc<Envd>, pid: u32, signal: Signal) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let envd = envd.clone();
    let name = match signal {
        Signal::Terminate => "SIGNAL_SIGTERM",
        Signal::Kill => "SIGNAL_SIGKILL",
    };
    runtime.spawn(async move {
        let request = SendSignalRequest {
            process: Selector { pid },
            signal: name,
        };
        if let Err(e) = envd.unary("envd SendSignal", "SendSignal", &request).await {
            // Not found: it already ended, which is what we wanted.
            if e.code() != Some("not_found") {
                tracing::warn!(pid, error = %e, "could not signal an E2B process");
            }
        }
    });
}

/// A long-lived script with live pipes (the stream transport's session, an agent).
pub(crate) async fn stream(envd: Arc<Envd>, spawn: Spawn) -> Result<ExecStream, RunnerError> {
    let (script, env) = far_side(&with_cwd(&spawn.script, spawn.cwd.as_deref()), &spawn.env);
    let running = start(envd, &script, &env, true, None).await?;
    let Running {
        envd,
        pid,
        stdin,
        stdout,
        stderr,
        ended,
        tasks,
    } = running;
    let stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match stdin {
        Some(pipe) => Box::pin(pipe),
        None => Box::pin(tokio::io::sink()),
    };
    Ok(ExecStream {
        stdin,
        stdout: Box::pin(stdout),
        stderr: Box::pin(stderr),
        process: Box::new(E2bProcess {
            envd,
            pid,
            ended,
            _tasks: tasks,
        }),
    })
}

/// One script to completion: envd's deadline is the exec's bound, and so is ours (the
/// channel may stall); past it the process is killed and the exec reports a time-out.
pub(crate) async fn exec(envd: Arc<Envd>, exec: Exec) -> Result<ExecOutput, RunnerError> {
    let (script, env) = far_side(&with_cwd(&exec.script, exec.cwd.as_deref()), &exec.env);
    let with_stdin = !exec.stdin.is_empty();
    // One deadline for starting and finishing: the exec's bound is the whole exec's.
    let deadline = tokio::time::Instant::now() + exec.timeout;
    let started = tokio::time::timeout_at(
        deadline,
        start(envd, &script, &env, with_stdin, Some(exec.timeout)),
    )
    .await;
    let Ok(running) = started else {
        return Ok(timed_out());
    };
    let mut running = running?;
    let feed = running.stdin.take().map(|mut pipe| {
        let bytes = exec.stdin;
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        })
    });
    let (pid, envd) = (running.pid, running.envd.clone());
    let collected = tokio::time::timeout_at(deadline, collect(running)).await;
    if let Some(feed) = feed {
        feed.abort();
    }
    match collected {
        Err(_) => {
            send_signal(&envd, pid, Signal::Kill);
            Ok(timed_out())
        }
        Ok(output) => output,
    }
}

/// Both pipes to their ends, then the status.
async fn collect(running: Running) -> Result<ExecOutput, RunnerError> {
    let Running {
        stdout,
        stderr,
        mut ended,
        tasks,
        ..
    } = running;
    let (stdout, stderr) = tokio::join!(
        read_bounded(stdout, MAX_OUTPUT),
        read_bounded(stderr, MAX_ERROR_OUTPUT)
    );
    let end = wait_ended(&mut ended).await;
    drop(tasks); // both pumps are done or have nothing left to do
    match end? {
        Ended::Status(status) => Ok(ExecOutput {
            code: status.code,
            stdout,
            stderr,
            timed_out: false,
        }),
        Ended::Deadline => Ok(ExecOutput {
            stdout,
            stderr,
            ..timed_out()
        }),
        Ended::Broken { transient, message } => Err(RunnerError::Provider { transient, message }),
    }
}

fn timed_out() -> ExecOutput {
    ExecOutput {
        code: None,
        timed_out: true,
        ..ExecOutput::default()
    }
}

async fn wait_ended(ended: &mut watch::Receiver<Option<Ended>>) -> Result<Ended, RunnerError> {
    match ended.wait_for(Option::is_some).await {
        Ok(end) => Ok(end.clone().unwrap_or(Ended::Deadline)),
        Err(_) => Err(RunnerError::Provider {
            transient: true,
            message: "the E2B process's stream task ended without a status".into(),
        }),
    }
}

/// A process in the sandbox, as [`Process`].
#[derive(Debug)]
struct E2bProcess {
    envd: Arc<Envd>,
    pid: u32,
    ended: watch::Receiver<Option<Ended>>,
    /// Held to stop the pumps when the process is let go of.
    _tasks: Tasks,
}

impl Process for E2bProcess {
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus, RunnerError>> {
        Box::pin(async move {
            match wait_ended(&mut self.ended).await? {
                Ended::Status(status) => Ok(status),
                Ended::Deadline => Ok(ExitStatus {
                    code: None,
                    signal: Some(9),
                }),
                Ended::Broken { transient, message } => {
                    Err(RunnerError::Provider { transient, message })
                }
            }
        })
    }

    fn signal(&mut self, signal: Signal) -> Result<(), RunnerError> {
        if self.ended.borrow().is_none() {
            send_signal(&self.envd, self.pid, signal);
        }
        Ok(())
    }
}

impl Drop for E2bProcess {
    // The pumps stop with `tasks`.
    fn drop(&mut self) {
        self.kill();
    }
}
