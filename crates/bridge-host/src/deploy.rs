//! Deployment: put the gateway into a sandbox, start it, keep it up, serve its queue,
//! and take it all down again.
//!
//! [`Bridge::start`] makes the queue directory (owner-only) and learns the sandbox's
//! architecture (`uname -m`, in the same exec), uploads the gateway binary built for it
//! ([`GatewayBinaries`]) unless the sandbox already has the same one (sha256), starts it
//! detached, waits for `ready.json` and starts the worker. With the stream transport all of
//! that is one streaming exec that then becomes the session (`deploy/stream_start.rs`);
//! step by step it costs two execs when the binary is already there and the channel holds. Every step is safe to repeat and is retried on channel failures
//! (`deploy/retry.rs`); a supervisor restarts a gateway that crashes (`deploy/supervise.rs`).

mod arch;
mod retry;
mod scripts;
mod steps;
mod stream_start;
mod supervise;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::env as names;
use bridge_protocol::wire::ReadyFile;
use tokio::sync::watch;

use crate::policy::HostPolicy;
use crate::proxy::Upstream;
use crate::runner::{Exec, ExecStream, Runner, RunnerError};
use crate::transport::{self, TransportKind};
use crate::worker::{Worker, WorkerConfig, WorkerHandle};

pub use arch::{Arch, GatewayBinaries, GATEWAY_FILE_NAME};
pub use retry::{RetryPolicy, DEPLOY_ATTEMPTS, DEPLOY_BACKOFF_CAP, DEPLOY_BACKOFF_START};
pub use scripts::SCRIPT_TOOLS;
pub use supervise::{
    RestartPolicy, CHECK_INTERVAL, MAX_RESTARTS, RESTART_BACKOFF_CAP, RESTART_BACKOFF_START,
    STABLE_AFTER,
};

use steps::{Launch, Place};

/// Default bound for the short set-up and tear-down execs.
pub const SETUP_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the supervisor may take to notice a stop (it finishes a restart under way,
/// which is itself bounded; past this it is abandoned).
const SUPERVISOR_STOP_BOUND: Duration = Duration::from_secs(120);

/// Everything [`Bridge::start`] needs besides the runner.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The gateway binaries on this machine (`cargo xtask dist` output, or a caller's
    /// paths); the one for the sandbox's architecture is uploaded.
    pub gateway: GatewayBinaries,
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
    /// Bound for each short set-up and tear-down exec.
    pub setup_timeout: Duration,
    /// How each deployment step is retried on channel failures.
    pub retry: RetryPolicy,
    /// How a crashed gateway is noticed and restarted.
    pub restart: RestartPolicy,
}

impl BridgeConfig {
    /// Defaults for everything but the binaries, the sandbox directory and the upstream
    /// (a single `PathBuf` is one binary for every sandbox: [`GatewayBinaries::single`]).
    pub fn new(
        gateway: impl Into<GatewayBinaries>,
        sandbox_dir: PathBuf,
        upstream: Upstream,
    ) -> Self {
        Self {
            gateway: gateway.into(),
            sandbox_dir,
            upstream,
            policy: Arc::new(HostPolicy::default()),
            worker: WorkerConfig::default(),
            transport: TransportKind::Stream,
            max_queue_depth: 64,
            ready_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(10),
            setup_timeout: SETUP_EXEC_TIMEOUT,
            retry: RetryPolicy::default(),
            restart: RestartPolicy::default(),
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
    /// The sandbox's `uname -m` names an architecture the gateway is not built for.
    #[error("the sandbox's architecture (uname -m: {machine}) has no gateway build; there are builds for {}", arch::list(&Arch::ALL))]
    UnsupportedArch {
        /// What `uname -m` printed (bounded and escaped).
        machine: String,
    },
    /// No gateway binary was given for the sandbox's architecture.
    #[error("the sandbox is {arch}, but there is no gateway binary for {arch} (have: {}); build it with `cargo xtask dist --target {}`, or pass one", arch::list(.have), .arch.musl_target())]
    NoBinaryForArch {
        /// The sandbox's architecture.
        arch: Arch,
        /// The architectures there are binaries for.
        have: Vec<Arch>,
    },
    /// The gateway binary chosen is an ELF file for another architecture than the
    /// sandbox's.
    #[error("the gateway binary {path} is built for {binary}, but the sandbox is {machine} (uname -m); build it with `cargo xtask dist` and pass the matching one")]
    WrongArch {
        /// The binary.
        path: PathBuf,
        /// What its ELF header says.
        binary: Arch,
        /// What the sandbox's `uname -m` printed.
        machine: String,
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
    /// A step kept failing in the exec channel until its attempts were used up.
    #[error("{step} failed {attempts} attempts in a row in the exec channel; the last: {last}")]
    Exhausted {
        /// The deployment step, in words.
        step: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure, bounded and escaped.
        last: String,
    },
    /// The gateway kept crashing, and restarting it stopped being worth it.
    #[error("the gateway kept crashing ({restarts} restarts in a row; the last: {last}); the end of its log: {log}")]
    GatewayCrashed {
        /// Restarts tried in a row.
        restarts: u32,
        /// Why the last one did not hold.
        last: String,
        /// The end of the gateway's log, bounded and escaped.
        log: String,
    },
    /// [`TransportKind::SharedFs`] was asked for with a runner that does not share files.
    #[error("the shared-filesystem transport needs a runner on this machine's file system")]
    NotSharedFs,
}

/// Starts bridges.
#[derive(Debug)]
pub struct Bridge;

/// A running bridge: the gateway in the sandbox (and its supervisor) and the worker on
/// the host.
#[derive(Debug)]
pub struct BridgeHandle {
    runner: Arc<dyn Runner>,
    place: Place,
    token: String,
    ready: ReadyFile,
    worker: WorkerHandle,
    stop_grace: Duration,
    supervisor: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    restarts: Arc<AtomicU64>,
    failure: watch::Receiver<Option<Arc<DeployError>>>,
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
        let place = Place {
            queue: config.queue_dir(),
            binary: config.remote_binary(),
            setup_timeout: config.setup_timeout,
            retry: config.retry,
        };
        let mut launch = launch(&config);
        let (ready, session) = if streams_at_start(&config, runner.as_ref()) {
            let started =
                stream_start::start(runner.as_ref(), &place, &launch, &config.gateway).await?;
            (started.ready, Some(started.session))
        } else {
            let ready =
                deploy_step_by_step(runner.as_ref(), &place, &launch, &config.gateway).await?;
            (ready, None)
        };
        // ready.json is the sandbox's word.
        let url = bridge_protocol::shown(&ready.base_url);
        tracing::info!(url = %url, pid = ready.pid, "gateway ready");
        // A restarted gateway must be where the agent already calls.
        launch.port = ready.port;
        let worker = spawn_worker(&runner, &config, &place, session);
        let restarts = Arc::new(AtomicU64::new(0));
        let (failed, failure) = watch::channel(None);
        let supervisor = supervise::Supervisor {
            runner: runner.clone(),
            place: place.clone(),
            launch: launch.clone(),
            policy: config.restart,
            restarts: restarts.clone(),
            metrics: config.worker.metrics.clone(),
            failure: failed,
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervisor.run(stopped));
        Ok(BridgeHandle {
            runner,
            place,
            token: launch.token,
            ready,
            worker,
            stop_grace: config.stop_grace,
            supervisor: Some((stop, task)),
            restarts,
            failure,
        })
    }
}

/// The stream transport starts in one streaming exec that becomes its session.
fn streams_at_start(config: &BridgeConfig, runner: &dyn Runner) -> bool {
    config.transport == TransportKind::Stream && runner.capabilities().streaming
}

/// One exec per step: prepare (and learn the machine and the installed binary's hash),
/// upload the machine's binary if it differs, start.
async fn deploy_step_by_step(
    runner: &dyn Runner,
    place: &Place,
    launch: &Launch,
    binaries: &GatewayBinaries,
) -> Result<ReadyFile, DeployError> {
    let found = steps::prepare(runner, place).await?;
    let (path, binary) = binaries.load(&found.machine)?;
    tracing::debug!(machine = %found.machine, binary = %path.display(), "gateway binary chosen");
    let sha = sha256_hex(&binary);
    if found.installed_sha != sha {
        tracing::info!(bytes = binary.len(), machine = %found.machine, "uploading the gateway binary");
        steps::upload(runner, place, &binary, &sha).await?;
    } else {
        tracing::debug!("the sandbox already has this gateway binary");
    }
    steps::start_gateway(runner, place, launch).await
}

/// What the gateway is started with (the port is the first gateway's for restarts).
fn launch(config: &BridgeConfig) -> Launch {
    Launch {
        token: new_token(),
        deploy_id: new_token(),
        port: 0,
        ready_timeout: config.ready_timeout,
        settings: vec![
            (
                names::RESPONSE_TIMEOUT_MS,
                config.worker.response_timeout.as_millis().to_string(),
            ),
            (names::MAX_QUEUE_DEPTH, config.max_queue_depth.to_string()),
            (
                names::MAX_BODY_BYTES,
                config.policy.max_body_bytes.to_string(),
            ),
        ],
    }
}

/// Starts the worker; `session` is the start-up exec that became the stream transport's
/// session, if it did.
fn spawn_worker(
    runner: &Arc<dyn Runner>,
    config: &BridgeConfig,
    place: &Place,
    session: Option<ExecStream>,
) -> WorkerHandle {
    let mut kind = config.transport;
    if kind == TransportKind::Stream && !runner.capabilities().streaming {
        tracing::info!("the runner cannot stream: using the one-shot transport (an exec per call)");
        kind = TransportKind::OneShot;
    }
    let transport = transport::build(
        kind,
        runner.clone(),
        place.queue.clone(),
        place.binary.clone(),
        config.setup_timeout,
        session,
    );
    Worker::spawn(
        transport,
        config.upstream.clone(),
        config.policy.clone(),
        config.worker.clone(),
    )
}

impl BridgeHandle {
    /// The variables an agent in the sandbox gets: the gateway URL and the bridge token,
    /// never the real credential.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            (names::AGENT_API_URL.into(), self.ready.base_url.clone()),
            (names::AGENT_API_KEY.into(), self.token.clone()),
            (names::MODE.into(), names::QUEUE_V1.into()),
            (names::QUEUE_DIR.into(), steps::path_text(&self.place.queue)),
        ]
    }

    /// What the first gateway wrote in `ready.json` (a restarted one keeps its URL).
    pub fn ready(&self) -> &ReadyFile {
        &self.ready
    }

    /// The queue directory, as the sandbox sees it.
    pub fn queue_dir(&self) -> &Path {
        &self.place.queue
    }

    /// The worker serving the queue (statistics, exec count).
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    /// How many times the gateway has been restarted after a crash.
    pub fn restart_count(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Resolves when the gateway kept crashing and the bridge gave up on it
    /// ([`DeployError::GatewayCrashed`]); never while it is up. The run should end then.
    pub async fn failed(&self) -> Arc<DeployError> {
        let mut failure = self.failure.clone();
        if let Ok(seen) = failure.wait_for(Option::is_some).await {
            if let Some(e) = seen.as_ref() {
                return e.clone();
            }
        }
        // The supervisor ended without a failure (the bridge is stopping).
        std::future::pending().await
    }

    /// Stops everything: the supervisor (no restart from here on), then the gateway stops
    /// accepting, the worker drains and answers what is still queued with 503, the gateway
    /// exits (or is killed after the grace), and the queue directory is removed.
    pub async fn stop(mut self) -> Result<(), DeployError> {
        if let Some((stop, task)) = self.supervisor.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(SUPERVISOR_STOP_BOUND, task)
                .await
                .is_err()
            {
                tracing::warn!("the gateway's supervisor did not stop in time");
            }
        }
        let env = [("Q", steps::path_text(&self.place.queue))];
        let timeout = self.place.setup_timeout;
        let terminate = sandbox_exec(
            self.runner.as_ref(),
            &self.place.retry,
            "stopping the gateway",
            scripts::TERMINATE,
            &env,
            timeout,
        )
        .await;
        self.worker.stop().await;
        let tries = (self.stop_grace.as_millis() / 50).max(1).to_string();
        let reap = sandbox_exec(
            self.runner.as_ref(),
            &self.place.retry,
            "removing the queue",
            &scripts::reap(),
            &[env[0].clone(), ("TRIES", tries)],
            self.stop_grace + timeout,
        )
        .await;
        terminate.and(reap)
    }
}

/// Runs a constant tear-down script with inputs in its environment, retried on channel
/// failures like the set-up steps (both scripts are safe to repeat).
async fn sandbox_exec(
    runner: &dyn Runner,
    retry: &RetryPolicy,
    step: &'static str,
    script: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<(), DeployError> {
    let exec = env
        .iter()
        .fold(Exec::new(script, timeout), |e, (k, v)| e.env(*k, v.clone()));
    retry::retried(retry, step, || async {
        retry::exec_once(runner, step, exec.clone()).await.map(drop)
    })
    .await
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

/// The sha256 of `bytes` in lower-case hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
