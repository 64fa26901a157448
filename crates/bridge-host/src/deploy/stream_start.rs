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

use super::retry::{classify, retried, Failure};
use super::steps::{parse_ready, start_exec, Launch, Place};
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
    /// The sandbox lacks the binary and the runner has a file API, which carries it
    /// better than the exec's stdin: upload that way, then start again.
    NeedsUpload,
}

/// Starts the gateway through one streaming exec, retrying channel failures.
pub(crate) async fn start(
    runner: &dyn Runner,
    place: &Place,
    launch: &Launch,
    binary: &[u8],
    sha: &str,
) -> Result<Started, DeployError> {
    const STEP: &str = "starting the gateway and its session";
    let by_stdin = (!runner.capabilities().upload).then_some(binary);
    let first = retried(&place.retry, STEP, || {
        attempt(runner, place, launch, by_stdin, sha, STEP)
    })
    .await?;
    if let Outcome::Started(started) = first {
        return Ok(started);
    }
    tracing::info!(bytes = binary.len(), "uploading the gateway binary");
    super::steps::upload(runner, place, binary, sha).await?;
    let again = retried(&place.retry, STEP, || {
        attempt(runner, place, launch, None, sha, STEP)
    })
    .await?;
    match again {
        Outcome::Started(started) => Ok(started),
        Outcome::NeedsUpload => Err(DeployError::Exhausted {
            step: STEP,
            attempts: 1,
            last: "the sandbox still lacks the uploaded gateway binary".into(),
        }),
    }
}

async fn attempt(
    runner: &dyn Runner,
    place: &Place,
    launch: &Launch,
    binary: Option<&[u8]>,
    sha: &str,
    step: &'static str,
) -> Result<Outcome, Failure> {
    let exec = start_exec(place, launch);
    // The start script's own bound, plus time for the binary to cross.
    let bound = exec.timeout + place.setup_timeout;
    let mut env = exec.env;
    env.push(("SHA".into(), sha.to_owned()));
    env.push(("SIZE".into(), binary.map_or(0, <[u8]>::len).to_string()));
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
        Ok(Err(e)) if e.transient() => return Err(Failure::Channel(e.to_string())),
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
    let read = read_ready(&mut stdout, &mut stdin, binary);
    let why = match tokio::time::timeout(bound, read).await {
        Ok(Ok(Some(ready))) => {
            let session = ExecStream {
                stdin,
                stdout: Box::pin(stdout),
                stderr,
                process,
            };
            return Ok(Outcome::Started(Started { ready, session }));
        }
        Ok(Ok(None)) => {
            process.kill();
            return Ok(Outcome::NeedsUpload);
        }
        Ok(Err(why)) => why,
        Err(_) => format!("no ready.json within {} ms", bound.as_millis()),
    };
    // What the script said and how it ended tell a channel failure from its own.
    let code = tokio::time::timeout(AFTERMATH_BOUND, process.wait())
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|status| status.code);
    process.kill();
    let out = ExecOutput {
        code,
        stdout: why.into_bytes(),
        stderr: read_stderr(stderr).await,
        timed_out: code.is_none(),
    };
    Err(classify(step, &out))
}

/// Reads `pid N` and `ready.json`, sending the binary first if the script asks for it;
/// `None` if it asks and there is no `binary` to send this way.
async fn read_ready<R, W>(
    stdout: &mut BufReader<R>,
    stdin: &mut W,
    binary: Option<&[u8]>,
) -> Result<Option<ReadyFile>, String>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let mut first = read_line(stdout).await?;
    if first == "upload" {
        let Some(binary) = binary else {
            return Ok(None);
        };
        tracing::info!(bytes = binary.len(), "sending the gateway binary");
        stdin
            .write_all(binary)
            .await
            .map_err(|e| format!("sending the binary: {e}"))?;
        stdin
            .flush()
            .await
            .map_err(|e| format!("sending the binary: {e}"))?;
        first = read_line(stdout).await?;
    }
    let json = read_line(stdout).await?;
    parse_ready(&format!("{first}\n{json}")).map(Some)
}

/// One line of at most [`START_LINE_LIMIT`] bytes, without its newline.
async fn read_line<R: AsyncRead + Unpin>(stdout: &mut BufReader<R>) -> Result<String, String> {
    let mut line = Vec::new();
    let limit = START_LINE_LIMIT as u64 + 1;
    let n = (&mut *stdout)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the start's output: {e}"))?;
    if n == 0 {
        return Err("the start ended before the gateway was ready".into());
    }
    if line.last() != Some(&b'\n') {
        return Err(format!(
            "garbled output: {}",
            bridge_protocol::shown(&String::from_utf8_lossy(&line))
        ));
    }
    line.pop();
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn read_stderr(stderr: Pin<Box<dyn AsyncRead + Send>>) -> Vec<u8> {
    let mut text = Vec::new();
    let mut limited = stderr.take(STDERR_LIMIT);
    let _ = tokio::time::timeout(AFTERMATH_BOUND, limited.read_to_end(&mut text)).await;
    text
}
