//! Start-up in one round trip: a streaming exec that prepares the queue, takes the gateway
//! binary on its stdin if the sandbox lacks it, starts the gateway (or finds this
//! deployment's running), prints `ready.json` and then becomes the stream transport's
//! session ([`scripts::start_session`]). Over a distant provider that is one exec (`d`)
//! when the binary is there and two one-way trips more plus the transfer when it is not,
//! where the step-by-step deployment costs an exec per step and one more for the session.
//!
//! Every attempt is as safe to repeat as the steps it replaces (the start runs under the
//! same lock and keeps this deployment's live gateway); channel failures are retried.

use std::pin::Pin;
use std::time::Duration;

use bridge_protocol::wire::ReadyFile;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};

use super::arch::{GatewayBinaries, ReadBinaries};
use super::retry::{classify, retried, Failure};
use super::steps::{parse_ready, start_exec, valid_machine, Launch, Place};
use super::{scripts, DeployError};
use crate::runner::{ExecOutput, ExecStream, Runner, Spawn};

/// Longest line the start prints before the session's greeting (`ready.json` is short).
const START_LINE_LIMIT: usize = 64 * 1024;
/// Bytes of the script's stderr an error quotes.
const STDERR_LIMIT: u64 = 4096;
/// How long a failed start's exit status and stderr are waited for.
const AFTERMATH_BOUND: Duration = Duration::from_secs(2);

/// The gateway's `ready.json`, and the open exec that is now its session (its greeting
/// not read yet).
pub(crate) struct Started {
    pub(crate) ready: ReadyFile,
    pub(crate) session: ExecStream,
}

/// What one attempt came to.
enum Outcome {
    Started(Started),
    /// The sandbox (`uname -m` said this machine) lacks the binary and the runner has a
    /// file API, which carries it better than the exec's stdin: upload that way, then
    /// start again.
    NeedsUpload(String),
}

/// Starts the gateway through one streaming exec, retrying channel failures.
pub(crate) async fn start(
    runner: &dyn Runner,
    place: &Place,
    launch: &Launch,
    binaries: &GatewayBinaries,
) -> Result<Started, DeployError> {
    const STEP: &str = "starting the gateway and its session";
    // Read once for every attempt: the hashes go first, the chosen one's bytes after.
    let binaries = binaries.read_all()?;
    let shas = binaries.shas();
    let by_stdin = !runner.capabilities().upload;
    let first = retried(&place.retry, STEP, || {
        attempt(runner, place, launch, (&binaries, &shas, by_stdin), STEP)
    })
    .await?;
    let Outcome::NeedsUpload(machine) = first else {
        return first_started(first);
    };
    let binary = binaries.load(&machine)?;
    tracing::info!(bytes = binary.bytes.len(), %machine, binary = %binary.path.display(), "uploading the gateway binary");
    super::steps::upload(runner, place, &binary.bytes, &binary.sha).await?;
    let again = retried(&place.retry, STEP, || {
        attempt(runner, place, launch, (&binaries, &shas, false), STEP)
    })
    .await?;
    first_started(again)
}

fn first_started(outcome: Outcome) -> Result<Started, DeployError> {
    match outcome {
        Outcome::Started(started) => Ok(started),
        Outcome::NeedsUpload(_) => Err(DeployError::Exhausted {
            step: "starting the gateway and its session",
            attempts: 1,
            last: "the sandbox still lacks the uploaded gateway binary".into(),
        }),
    }
}

/// The binaries, their hashes by variable, and whether a missing one goes on stdin.
type Binaries<'a> = (&'a ReadBinaries<'a>, &'a [(String, String)], bool);

async fn attempt(
    runner: &dyn Runner,
    place: &Place,
    launch: &Launch,
    (binaries, shas, by_stdin): Binaries<'_>,
    step: &'static str,
) -> Result<Outcome, Failure> {
    let exec = start_exec(place, launch);
    // The start script's own bound, plus time for the binary to cross.
    let bound = exec.timeout + place.setup_timeout;
    let mut env = exec.env;
    env.extend(shas.iter().cloned());
    let spawn = Spawn {
        script: scripts::start_session(),
        env,
        cwd: None,
    };
    let stream = match tokio::time::timeout(place.setup_timeout, runner.stream(spawn)).await {
        Err(_) => {
            return Err(Failure::Channel(
                "the streaming exec did not open in time".into(),
            ))
        }
        Ok(Err(e)) if e.transient() => {
            // The runner's error may quote the provider: bounded and escaped, as exec_once does.
            return Err(Failure::Channel(
                bridge_protocol::shown_error(&e).to_string(),
            ));
        }
        Ok(Err(source)) => return Err(Failure::Fatal(DeployError::Runner { step, source })),
        Ok(Ok(stream)) => stream,
    };
    let ExecStream {
        mut stdin,
        stdout,
        stderr,
        mut process,
    } = stream;
    let mut stdout = BufReader::new(stdout);
    let read = read_ready(&mut stdout, &mut stdin, binaries, by_stdin);
    let (why, timed_out) = match tokio::time::timeout(bound, read).await {
        Ok(Ok(Read::Ready(ready))) => {
            let session = ExecStream {
                stdin,
                stdout: Box::pin(stdout),
                stderr,
                process,
            };
            return Ok(Outcome::Started(Started { ready, session }));
        }
        Ok(Ok(Read::NeedsUpload(machine))) => {
            process.kill();
            return Ok(Outcome::NeedsUpload(machine));
        }
        Ok(Ok(Read::Refused(e))) => {
            process.kill();
            return Err(Failure::Fatal(e));
        }
        Ok(Err(why)) => (why, false),
        Err(_) => (
            format!("no ready.json within {} ms", bound.as_millis()),
            true,
        ),
    };
    // Nothing more is read or sent: a writer still flooding stdout gets EPIPE and ends.
    drop((stdin, stdout));
    // What the script said and how it ended tell a channel failure from its own.
    let code = tokio::time::timeout(AFTERMATH_BOUND, process.wait())
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|status| status.code);
    process.kill();
    let out = ExecOutput {
        code,
        stdout: Vec::new(),
        stderr: read_stderr(stderr).await,
        timed_out,
    };
    Err(failure(step, why, &out))
}

/// Why an attempt that printed no `ready.json` failed. A start that exited 0 without it
/// lost or cut its output on the way (a channel failure, as a step-by-step exec's
/// garbled output is); otherwise the exit decides ([`classify`]). A channel failure says
/// what was wrong with the output (the sandbox's words in it are bounded and escaped).
fn failure(step: &'static str, why: String, out: &ExecOutput) -> Failure {
    let exit_0 = out.code == Some(0) && !out.timed_out;
    match classify(step, out) {
        Failure::Fatal(e) if !exit_0 => Failure::Fatal(e),
        _ => Failure::Channel(format!("{why} ({})", ended(out))),
    }
}

/// How the start's exec ended, and what it said on stderr, for an error message.
fn ended(out: &ExecOutput) -> String {
    let how = match out.code {
        Some(code) => format!("the start's exec ended with exit {code}"),
        None if out.timed_out => "the start's exec was killed after its bound".into(),
        None => "the start's exec ended with no exit status".into(),
    };
    let stderr = out.stderr_text();
    if stderr.is_empty() {
        return how;
    }
    format!("{how}; its stderr: {}", bridge_protocol::shown(&stderr))
}

/// What the start printed before the session's greeting.
enum Read {
    Ready(ReadyFile),
    NeedsUpload(String),
    /// The sandbox's machine has no binary here, or not one that runs there.
    Refused(DeployError),
}

/// Reads `machine M`, sends the binary for it if the script asks (and `by_stdin`), then
/// reads `pid N` and `ready.json`. Each line is bounded ([`START_LINE_LIMIT`]), and an
/// error names the line that was wrong.
async fn read_ready<R, W>(
    stdout: &mut BufReader<R>,
    stdin: &mut W,
    binaries: &ReadBinaries<'_>,
    by_stdin: bool,
) -> Result<Read, String>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    const MACHINE: &str = "`machine M`";
    let line = read_line(stdout, MACHINE).await?;
    let machine = line
        .strip_prefix("machine ")
        .filter(|m| valid_machine(m))
        .ok_or_else(|| garbled(MACHINE, &line))?
        .to_owned();
    // Chosen (and its ELF header checked) even when the sandbox has it already.
    let binary = match binaries.load(&machine) {
        Ok(chosen) => chosen,
        Err(e) => return Ok(Read::Refused(e)),
    };
    tracing::debug!(%machine, binary = %binary.path.display(), "gateway binary chosen");
    let mut first = read_line(stdout, "`pid N` or `upload`").await?;
    if first == "upload" {
        if !by_stdin {
            return Ok(Read::NeedsUpload(machine));
        }
        tracing::info!(bytes = binary.bytes.len(), %machine, "sending the gateway binary");
        let header = format!("{} {}\n", binary.bytes.len(), binary.sha);
        let sent = async {
            stdin.write_all(header.as_bytes()).await?;
            stdin.write_all(&binary.bytes).await?;
            stdin.flush().await
        };
        sent.await.map_err(|e| format!("sending the binary: {e}"))?;
        first = read_line(stdout, "`pid N`").await?;
    }
    let json = read_line(stdout, "`ready.json`").await?;
    parse_ready(&format!("{first}\n{json}")).map(Read::Ready)
}

fn garbled(what: &str, line: &str) -> String {
    format!(
        "garbled output where {what} was expected: {}",
        bridge_protocol::shown(line)
    )
}

/// One line of at most [`START_LINE_LIMIT`] bytes, without its newline; `what` names it
/// in an error.
async fn read_line<R: AsyncRead + Unpin>(
    stdout: &mut BufReader<R>,
    what: &str,
) -> Result<String, String> {
    let mut line = Vec::new();
    let limit = START_LINE_LIMIT as u64 + 1;
    let n = (&mut *stdout)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the start's output where {what} was expected: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(String::from_utf8_lossy(&line).into_owned());
    }
    let text = String::from_utf8_lossy(&line);
    Err(match n {
        0 => format!("the start's output ended where {what} was expected"),
        n if n as u64 == limit => garbled(
            what,
            &format!("(a line longer than {START_LINE_LIMIT} bytes) {text}"),
        ),
        _ => format!(
            "the start's output ended in the middle of {what}: {}",
            bridge_protocol::shown(&text)
        ),
    })
}

async fn read_stderr(stderr: Pin<Box<dyn AsyncRead + Send>>) -> Vec<u8> {
    let mut text = Vec::new();
    let mut limited = stderr.take(STDERR_LIMIT);
    let _ = tokio::time::timeout(AFTERMATH_BOUND, limited.read_to_end(&mut text)).await;
    text
}
