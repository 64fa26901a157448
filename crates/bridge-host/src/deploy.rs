//! Deployment: put the gateway into a sandbox, start it, serve its queue, and take it all
//! down again.
//!
//! [`Bridge::start`] makes the queue directory (owner-only), uploads the gateway binary
//! unless the sandbox already has the same one (sha256), starts it detached, waits for
//! `ready.json` and starts the worker. It costs two execs when the binary is already there.

mod scripts;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::env as names;
use bridge_protocol::wire::{self, ReadyFile};

use crate::policy::HostPolicy;
use crate::proxy::Upstream;
use crate::runner::{Exec, ExecOutput, Runner, RunnerError};
use crate::transport::{self, TransportKind};

use crate::worker::{Worker, WorkerConfig, WorkerHandle};

/// Bytes of the gateway binary sent per exec while uploading.
const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Bound for the short set-up and tear-down execs.
const SETUP_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything [`Bridge::start`] needs besides the runner.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The gateway binary on this machine (`cargo xtask dist` output, or a caller's path).
    pub gateway_binary: PathBuf,
    /// A directory inside the sandbox that the bridge may use.
    pub sandbox_dir: PathBuf,
    /// The upstream API and the real credential (which stays on the host).
    pub upstream: Upstream,
    /// What the worker lets through.
    pub policy: Arc<HostPolicy>,
    /// The worker's settings (concurrency, the agent's response timeout, audit log).
    pub worker: WorkerConfig,
    /// How the worker reaches the queue.
    pub transport: TransportKind,
    /// Pending requests before the gateway answers 503.
    pub max_queue_depth: usize,
    /// How long to wait for the gateway's `ready.json`.
    pub ready_timeout: Duration,
    /// How long the gateway may take to exit after TERM before it is killed.
    pub stop_grace: Duration,
}

impl BridgeConfig {
    /// Defaults for everything but the binary, the sandbox directory and the upstream.
    pub fn new(gateway_binary: PathBuf, sandbox_dir: PathBuf, upstream: Upstream) -> Self {
        Self {
            gateway_binary,
            sandbox_dir,
            upstream,
            policy: Arc::new(HostPolicy::default()),
            worker: WorkerConfig::default(),
            transport: TransportKind::Stream,
            max_queue_depth: 64,
            ready_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(10),
        }
    }

    /// The queue directory inside the sandbox.
    pub fn queue_dir(&self) -> PathBuf {
        Self::queue_dir_in(&self.sandbox_dir)
    }

    /// Where the gateway binary is kept inside the sandbox.
    pub fn remote_binary(&self) -> PathBuf {
        Self::remote_binary_in(&self.sandbox_dir)
    }

    /// The queue directory of a deployment into `sandbox_dir` (to re-attach to it).
    pub fn queue_dir_in(sandbox_dir: &Path) -> PathBuf {
        sandbox_dir.join("paperclip-bridge/queue")
    }

    /// The gateway binary of a deployment into `sandbox_dir`.
    pub fn remote_binary_in(sandbox_dir: &Path) -> PathBuf {
        sandbox_dir.join("paperclip-bridge/bin/paperclip-bridge-server")
    }
}

/// Why the bridge could not be deployed or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The gateway binary on this machine could not be read.
    #[error("cannot read the gateway binary {path}: {source}")]
    Binary {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The runner could not carry out a set-up exec at all.
    #[error("exec into the sandbox failed during {step}: {source}")]
    Runner {
        /// The deployment step, in words.
        step: &'static str,
        /// The runner's error.
        #[source]
        source: RunnerError,
    },
    #[error("{step} failed in the sandbox (exit {code:?}{timed_out}): {stderr}")]
    /// A set-up script ran in the sandbox and failed (or ran past its bound).
    Script {
        /// The deployment step, in words.
        step: &'static str,
        /// Its exit code (`None`: killed or timed out).
        code: Option<i32>,
        /// `", timed out"` when it ran past its bound, else empty.
        timed_out: &'static str,
        /// What it said on stderr.
        stderr: String,
    },
    /// The gateway started but its `ready.json` could not be read.
    #[error("the gateway's ready.json made no sense: {0}")]
    BadReady(String),
    /// [`TransportKind::SharedFs`] was asked for with a runner that does not share files.
    #[error("the shared-filesystem transport needs a runner on this machine's file system")]
    NotSharedFs,
}

/// Starts bridges.
#[derive(Debug)]
pub struct Bridge;

/// A running bridge: the gateway in the sandbox and the worker on the host.
#[derive(Debug)]
pub struct BridgeHandle {
    runner: Arc<dyn Runner>,
    queue_dir: PathBuf,
    token: String,
    ready: ReadyFile,
    worker: WorkerHandle,
    stop_grace: Duration,
}

impl Bridge {
    /// Deploys the gateway into the sandbox behind `runner` and starts serving it.
    pub async fn start(
        runner: Arc<dyn Runner>,
        config: BridgeConfig,
    ) -> Result<BridgeHandle, DeployError> {
        if config.transport == TransportKind::SharedFs && !runner.capabilities().shared_fs {
            return Err(DeployError::NotSharedFs);
        }
        let binary =
            std::fs::read(&config.gateway_binary).map_err(|source| DeployError::Binary {
                path: config.gateway_binary.clone(),
                source,
            })?;
        let queue_dir = config.queue_dir();
        let remote_binary = config.remote_binary();
        let sha = sha256_hex(&binary);
        let present = prepare(runner.as_ref(), &queue_dir, &remote_binary).await?;
        if present != sha {
            tracing::info!(bytes = binary.len(), "uploading the gateway binary");
            upload(runner.as_ref(), &remote_binary, &binary, &sha).await?;
        } else {
            tracing::debug!("the sandbox already has this gateway binary");
        }
        let token = new_token();
        let ready =
            start_gateway(runner.as_ref(), &config, &queue_dir, &remote_binary, &token).await?;
        // ready.json is the sandbox's word.
        let url = bridge_protocol::shown(&ready.base_url);
        tracing::info!(url = %url, pid = ready.pid, "gateway ready");
        let mut kind = config.transport;
        if kind == TransportKind::Stream && !runner.capabilities().streaming {
            tracing::info!(
                "the runner cannot stream: using the one-shot transport (an exec per call)"
            );
            kind = TransportKind::OneShot;
        }
        let transport = transport::build(
            kind,
            runner.clone(),
            queue_dir.clone(),
            remote_binary.clone(),
            SETUP_EXEC_TIMEOUT,
        );
        let worker = Worker::spawn(transport, config.upstream, config.policy, config.worker);
        Ok(BridgeHandle {
            runner,
            queue_dir,
            token,
            ready,
            worker,
            stop_grace: config.stop_grace,
        })
    }
}

impl BridgeHandle {
    /// The variables an agent in the sandbox gets: the gateway URL and the bridge token,
    /// never the real credential.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            (names::AGENT_API_URL.into(), self.ready.base_url.clone()),
            (names::AGENT_API_KEY.into(), self.token.clone()),
            (names::MODE.into(), names::QUEUE_V1.into()),
            (
                names::QUEUE_DIR.into(),
                self.queue_dir.to_string_lossy().into_owned(),
            ),
        ]
    }

    /// What the gateway wrote in `ready.json`.
    pub fn ready(&self) -> &ReadyFile {
        &self.ready
    }

    /// The queue directory, as the sandbox sees it.
    pub fn queue_dir(&self) -> &Path {
        &self.queue_dir
    }

    /// The worker serving the queue (statistics, exec count).
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    /// Stops everything: the gateway stops accepting, the worker drains and answers what is
    /// still queued with 503, the gateway exits (or is killed after the grace), and the
    /// queue directory is removed.
    pub async fn stop(self) -> Result<(), DeployError> {
        let env = [("Q", self.queue_dir.to_string_lossy().into_owned())];
        let terminate = sandbox_exec(
            self.runner.as_ref(),
            "stopping the gateway",
            scripts::TERMINATE,
            &env,
            SETUP_EXEC_TIMEOUT,
        )
        .await;
        self.worker.stop().await;
        let tries = (self.stop_grace.as_millis() / 50).max(1).to_string();
        let reap = sandbox_exec(
            self.runner.as_ref(),
            "removing the queue",
            scripts::REAP,
            &[env[0].clone(), ("TRIES", tries)],
            self.stop_grace + SETUP_EXEC_TIMEOUT,
        )
        .await;
        terminate.and(reap).map(|_| ())
    }
}

/// Creates the queue and returns the sha256 of the binary already in the sandbox.
async fn prepare(runner: &dyn Runner, queue: &Path, binary: &Path) -> Result<String, DeployError> {
    let out = sandbox_exec(
        runner,
        "preparing the queue directory",
        scripts::PREPARE,
        &[("Q", path_text(queue)), ("BIN", path_text(binary))],
        SETUP_EXEC_TIMEOUT,
    )
    .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Sends the binary through stdin in chunks; the last exec verifies the hash.
async fn upload(
    runner: &dyn Runner,
    remote: &Path,
    binary: &[u8],
    sha: &str,
) -> Result<(), DeployError> {
    let chunks: Vec<&[u8]> = if binary.is_empty() {
        vec![&[]]
    } else {
        binary.chunks(UPLOAD_CHUNK_BYTES).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let exec = Exec::new(scripts::UPLOAD_CHUNK, SETUP_EXEC_TIMEOUT)
            .stdin(chunk.to_vec())
            .env("BIN", path_text(remote))
            .env("SHA", sha)
            .env("FIRST", flag(i == 0))
            .env("LAST", flag(i == last));
        checked(runner, "uploading the gateway", exec).await?;
    }
    Ok(())
}

/// Starts the gateway with its settings in the environment and waits for `ready.json`.
async fn start_gateway(
    runner: &dyn Runner,
    config: &BridgeConfig,
    queue: &Path,
    binary: &Path,
    token: &str,
) -> Result<ReadyFile, DeployError> {
    let tries = (config.ready_timeout.as_millis() / 10).max(1).to_string();
    let exec = Exec::new(scripts::START, config.ready_timeout + SETUP_EXEC_TIMEOUT)
        .env("Q", path_text(queue))
        .env("BIN", path_text(binary))
        .env("TRIES", tries)
        .env(names::MODE, names::QUEUE_V1)
        .env(names::QUEUE_DIR, path_text(queue))
        .env(names::TOKEN, token)
        .env(names::HOST, "127.0.0.1")
        .env(names::PORT, "0")
        .env(
            names::RESPONSE_TIMEOUT_MS,
            config.worker.response_timeout.as_millis().to_string(),
        )
        .env(names::MAX_QUEUE_DEPTH, config.max_queue_depth.to_string())
        .env(
            names::MAX_BODY_BYTES,
            config.policy.max_body_bytes.to_string(),
        )
        .env("RUST_LOG", "info");
    let out = checked(runner, "starting the gateway", exec).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .split_once('\n')
        .map(|(_, rest)| rest)
        .ok_or_else(|| DeployError::BadReady(text.to_string()))?;
    wire::parse::<ReadyFile>(json.trim().as_bytes(), 64 * 1024)
        .map_err(|e| DeployError::BadReady(format!("{e}: {json}")))
}

/// Runs a constant script with inputs in its environment; non-zero exit is an error.
async fn sandbox_exec(
    runner: &dyn Runner,
    step: &'static str,
    script: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<ExecOutput, DeployError> {
    let exec = env
        .iter()
        .fold(Exec::new(script, timeout), |e, (k, v)| e.env(*k, v.clone()));
    checked(runner, step, exec).await
}

async fn checked(
    runner: &dyn Runner,
    step: &'static str,
    exec: Exec,
) -> Result<ExecOutput, DeployError> {
    let out = runner
        .exec(exec)
        .await
        .map_err(|source| DeployError::Runner { step, source })?;
    if !out.success() {
        return Err(DeployError::Script {
            step,
            code: out.code,
            timed_out: if out.timed_out { ", timed out" } else { "" },
            stderr: out.stderr_text(),
        });
    }
    Ok(out)
}

/// A fresh bridge token: 24 random bytes, base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; bridge_protocol::token::TOKEN_BYTES];
    // The OS random source failing is unrecoverable and must not yield a weak token.
    if let Err(e) = getrandom::fill(&mut bytes) {
        panic!("no OS randomness for the bridge token: {e}");
    }
    bridge_protocol::token::encode_token(&bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}
