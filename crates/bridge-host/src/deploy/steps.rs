//! The deployment steps, each one exec (or a few) and each safe to repeat: prepare the
//! queue, upload and install the binary, start the gateway (or find it started), check
//! that it lives, read its log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge_protocol::env as names;
use bridge_protocol::wire::{self, ReadyFile};

use super::retry::{exec_once, retried, Failure, RetryPolicy};
use super::{scripts, DeployError};
use crate::runner::{Exec, Runner};

/// Bytes of the gateway binary sent per exec while uploading.
const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Largest `ready.json` the host reads.
const READY_LIMIT: usize = 64 * 1024;
/// Lines of the gateway's log an error message carries.
pub(crate) const LOG_TAIL_LINES: u32 = 40;

/// Where things are in the sandbox, and how long a short exec may take.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// The queue directory.
    pub(crate) queue: PathBuf,
    /// The gateway binary.
    pub(crate) binary: PathBuf,
    /// Bound for the short set-up execs.
    pub(crate) setup_timeout: Duration,
    /// How deployment steps are retried.
    pub(crate) retry: RetryPolicy,
}

impl Place {
    fn exec(&self, script: impl Into<String>, timeout: Duration) -> Exec {
        Exec::new(script, timeout)
            .env("Q", path_text(&self.queue))
            .env("BIN", path_text(&self.binary))
    }
}

/// Everything the gateway is started with; the same for every restart, port included.
#[derive(Clone)]
pub(crate) struct Launch {
    /// The bridge token agents present.
    pub(crate) token: String,
    /// This deployment's id: a gateway started by another deployment is not ours.
    pub(crate) deploy_id: String,
    /// The port to bind: 0 at first, then the one the first gateway got.
    pub(crate) port: u16,
    /// How long the gateway may take to write `ready.json`.
    pub(crate) ready_timeout: Duration,
    /// The gateway's own settings (`PAPERCLIP_BRIDGE_*` names and values).
    pub(crate) settings: Vec<(&'static str, String)>,
}

impl fmt::Debug for Launch {
    // The token is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("port", &self.port)
            .field("ready_timeout", &self.ready_timeout)
            .finish_non_exhaustive()
    }
}

/// What the first exec found in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The sandbox's `uname -m`.
    pub(crate) machine: String,
    /// The sha256 of the gateway binary already installed, or `missing`.
    pub(crate) installed_sha: String,
}

/// Creates the queue and returns the sandbox's architecture and the sha256 of the binary
/// already there: one exec.
pub(crate) async fn prepare(runner: &dyn Runner, place: &Place) -> Result<Found, DeployError> {
    const STEP: &str = "preparing the queue directory";
    retried(&place.retry, STEP, || async {
        let out = exec_once(
            runner,
            STEP,
            place.exec(scripts::PREPARE, place.setup_timeout),
        )
        .await?;
        parse_found(&String::from_utf8_lossy(&out.stdout)).map_err(Failure::Channel)
    })
    .await
}

/// The longest `uname -m` taken seriously (real ones are a dozen characters).
const MACHINE_LIMIT: usize = 32;

/// A plausible `uname -m` (short, plain characters): anything else is garbled output.
pub(crate) fn valid_machine(machine: &str) -> bool {
    !machine.is_empty()
        && machine.len() <= MACHINE_LIMIT
        && machine
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// `uname -m` and then a sha256 or `missing`, as the prepare script prints them. Output
/// that is not that was cut short or lost on the way: the caller tries again.
pub(crate) fn parse_found(text: &str) -> Result<Found, String> {
    let garbled = || format!("garbled output: {}", bridge_protocol::shown(text));
    let mut lines = text.lines().map(str::trim);
    let (Some(machine), Some(sha), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err(garbled());
    };
    let machine_ok = valid_machine(machine);
    let hex = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if machine_ok && (hex || sha == "missing") {
        Ok(Found {
            machine: machine.to_owned(),
            installed_sha: sha.to_owned(),
        })
    } else {
        Err(garbled())
    }
}

/// Sends the binary through stdin in chunks, each stored under its own name, then joins
/// and checks them and renames the result into place.
pub(crate) async fn upload(
    runner: &dyn Runner,
    place: &Place,
    binary: &[u8],
    sha: &str,
) -> Result<(), DeployError> {
    const STEP: &str = "uploading the gateway";
    if runner.capabilities().upload {
        return upload_by_file_api(runner, place, binary, sha).await;
    }
    let chunks: Vec<&[u8]> = if binary.is_empty() {
        vec![&[]]
    } else {
        binary.chunks(UPLOAD_CHUNK_BYTES).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let exec = place
            .exec(scripts::UPLOAD_CHUNK, place.setup_timeout)
            .stdin(chunk.to_vec())
            .env("SHA", sha)
            .env("PART_SHA", super::sha256_hex(chunk))
            .env("INDEX", format!("{i:06}"));
        retried(&place.retry, STEP, || async {
            exec_once(runner, STEP, exec.clone()).await.map(drop)
        })
        .await?;
    }
    install(runner, place, sha, chunks.len()).await
}

/// The provider's file API writes the whole binary as the upload's one chunk (a name the
/// install step checks by sha256 before using it); nothing crosses an exec's stdin.
async fn upload_by_file_api(
    runner: &dyn Runner,
    place: &Place,
    binary: &[u8],
    sha: &str,
) -> Result<(), DeployError> {
    const STEP: &str = "uploading the gateway through the provider's file API";
    let chunk = scripts::upload_chunk_path(&place.binary, sha, 0);
    retried(&place.retry, STEP, || async {
        let sent = tokio::time::timeout(
            place.setup_timeout,
            runner.upload(chunk.clone(), binary.to_vec()),
        )
        .await;
        match sent {
            Err(_) => Err(Failure::Channel(format!(
                "no answer in {} ms",
                place.setup_timeout.as_millis()
            ))),
            Ok(Err(e)) if e.transient() => Err(Failure::Channel(e.to_string())),
            Ok(Err(source)) => Err(Failure::Fatal(DeployError::Runner { step: STEP, source })),
            Ok(Ok(())) => Ok(()),
        }
    })
    .await?;
    install(runner, place, sha, 1).await
}

/// Joins the `count` uploaded chunks, checks the sha256 and renames the binary in place.
async fn install(
    runner: &dyn Runner,
    place: &Place,
    sha: &str,
    count: usize,
) -> Result<(), DeployError> {
    const INSTALL: &str = "installing the gateway binary";
    let exec = place
        .exec(scripts::INSTALL, place.setup_timeout)
        .env("SHA", sha)
        .env("COUNT", count.to_string());
    retried(&place.retry, INSTALL, || async {
        exec_once(runner, INSTALL, exec.clone()).await.map(drop)
    })
    .await
}

/// Starts the gateway unless this deployment's already runs, and returns its `ready.json`.
pub(crate) async fn start_gateway(
    runner: &dyn Runner,
    place: &Place,
    launch: &Launch,
) -> Result<ReadyFile, DeployError> {
    const STEP: &str = "starting the gateway";
    let exec = start_exec(place, launch);
    retried(&place.retry, STEP, || async {
        let out = exec_once(runner, STEP, exec.clone()).await?;
        parse_ready(&String::from_utf8_lossy(&out.stdout)).map_err(Failure::Channel)
    })
    .await
}

/// The start script waits up to the ready time-out three times (for the lock, for
/// another deployment's gateway to stop, for `ready.json`): its exec bound covers all.
pub(crate) fn start_exec(place: &Place, launch: &Launch) -> Exec {
    let tries = (launch.ready_timeout.as_millis() / 10).max(1).to_string();
    let exec = place
        .exec(
            scripts::start(),
            launch.ready_timeout * 3 + place.setup_timeout,
        )
        .env("TRIES", tries)
        .env("DEPLOY", &launch.deploy_id)
        .env(names::MODE, names::QUEUE_V1)
        .env(names::QUEUE_DIR, path_text(&place.queue))
        .env(names::TOKEN, &launch.token)
        .env(names::HOST, "127.0.0.1")
        .env(names::PORT, launch.port.to_string())
        .env("RUST_LOG", "info");
    launch
        .settings
        .iter()
        .fold(exec, |e, (name, value)| e.env(*name, value.clone()))
}

/// `pid N` and then `ready.json`, as the start script prints them. Output that is not
/// that was cut short or lost on the way: the caller tries again.
pub(crate) fn parse_ready(text: &str) -> Result<ReadyFile, String> {
    let garbled = || format!("garbled output: {}", bridge_protocol::shown(text));
    let (first, json) = text.split_once('\n').ok_or_else(garbled)?;
    if !first.starts_with("pid ") {
        return Err(garbled());
    }
    wire::parse::<ReadyFile>(json.trim().as_bytes(), READY_LIMIT).map_err(|e| {
        format!(
            "the gateway's ready.json made no sense: {e}: {}",
            bridge_protocol::shown(json)
        )
    })
}

/// What one liveness check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// The gateway process runs.
    Alive,
    /// The sandbox says the gateway process is gone.
    Dead,
    /// The check itself failed (the channel): nothing is known.
    Unknown(String),
}

/// One cheap exec: is the gateway in `server.pid` still running? Not retried: the next
/// check is the retry, and only a clear "dead" from the sandbox counts.
pub(crate) async fn check(runner: &dyn Runner, place: &Place) -> Health {
    let exec = place.exec(scripts::check(), place.setup_timeout);
    match exec_once(runner, "checking the gateway", exec).await {
        Ok(out) => match String::from_utf8_lossy(&out.stdout).trim() {
            "alive" => Health::Alive,
            "dead" => Health::Dead,
            other => Health::Unknown(format!("garbled output: {}", bridge_protocol::shown(other))),
        },
        Err(Failure::Channel(why)) => Health::Unknown(why),
        Err(Failure::Fatal(e)) => Health::Unknown(bridge_protocol::shown_error(&e).to_string()),
    }
}

/// The end of the gateway's log, bounded and escaped for an error message.
pub(crate) async fn log_tail(runner: &dyn Runner, place: &Place) -> String {
    const STEP: &str = "reading the gateway's log";
    let exec = place
        .exec(scripts::LOG_TAIL, place.setup_timeout)
        .env("LINES", LOG_TAIL_LINES.to_string());
    let read = retried(&place.retry, STEP, || async {
        exec_once(runner, STEP, exec.clone()).await
    })
    .await;
    match read {
        Ok(out) => bridge_protocol::shown(&String::from_utf8_lossy(&out.stdout)).to_string(),
        Err(e) => format!(
            "(the log could not be read: {})",
            bridge_protocol::shown_error(&e)
        ),
    }
}

pub(crate) fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
