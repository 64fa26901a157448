//! Command-line options shared by `run`, `up` and `worker`, and their translation into a
//! bridge configuration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bridge_host::policy::HostPolicy;
use bridge_host::proxy::{Secret, Upstream};
use clap::{Args, ValueEnum};

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxKind {
    /// A bubblewrap sandbox on this machine: its own namespaces (user, mount, network,
    /// PID, IPC, UTS), a read-only /usr, a private workdir and /tmp, no host files.
    #[value(name = "bwrap", alias = "netns")]
    Bwrap,
    /// No sandbox: this machine's `sh` (for development; the agent can reach the network).
    Local,
    /// Any exec prefix (`--exec 'docker exec -i BOX'`, `--exec 'ssh -T HOST'`, ...).
    Exec,
    /// An E2B sandbox, created from `--e2b-template` (and killed at the end) or attached
    /// to with `--e2b-sandbox`; reads E2B_API_KEY, E2B_DOMAIN, E2B_API_URL, E2B_DEBUG.
    E2b,
}

/// How the worker reaches the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// Shared directory with `--sandbox local`, else the stream transport.
    Auto,
    /// The deployed gateway binary does the queue work in one long-lived exec (fastest).
    Stream,
    /// The deployed gateway binary does the queue work, one exec per take or put.
    #[value(name = "oneshot", alias = "helper")]
    OneShot,
    /// POSIX sh scripts over exec: works with any sandbox.
    Posix,
    /// Read the queue directly (only with `--sandbox local`).
    SharedFs,
}

/// Where the sandbox is and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Kind of sandbox.
    #[arg(long, value_enum, default_value = "bwrap")]
    pub sandbox: SandboxKind,
    /// Exec prefix for `--sandbox exec`, e.g. 'docker exec -i BOX'.
    #[arg(long, value_name = "PREFIX")]
    pub exec: Option<String>,
    /// Working directory inside the sandbox (default: a fresh temporary directory for
    /// bwrap/local, /tmp/paperclip-bridge for exec).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Show this host path to the agent, read-only, at the same path (repeatable; bwrap
    /// only). By default the agent sees /usr, a few /etc files and its own directories.
    #[arg(long = "ro-bind", value_name = "PATH")]
    pub ro_bind: Vec<PathBuf>,
    /// Show this host path to the agent, writable, at the same path (repeatable; bwrap
    /// only). Whatever is there is the agent's to read and change.
    #[arg(long = "bind", value_name = "PATH")]
    pub bind: Vec<PathBuf>,
    /// The bubblewrap program (bwrap only) [default: bwrap, looked up in the system
    /// directories].
    #[arg(long, value_name = "PROGRAM", default_value = bridge_host::runner::bwrap::BWRAP)]
    pub bwrap: PathBuf,
    #[command(flatten)]
    pub e2b: E2bArgs,
}

/// E2B's settings (`--sandbox e2b`).
#[derive(Debug, Clone, Default, Args)]
pub struct E2bArgs {
    /// The template a new E2B sandbox is made from.
    #[arg(long = "e2b-template", value_name = "NAME", default_value = "base")]
    pub e2b_template: String,
    /// Use this running E2B sandbox (left running at the end) instead of making one.
    #[arg(long = "e2b-sandbox", value_name = "ID")]
    pub e2b_sandbox: Option<String>,
    /// Read the E2B API key from this file [default: the E2B_API_KEY variable].
    #[arg(long = "e2b-api-key-file", value_name = "FILE")]
    pub e2b_api_key_file: Option<PathBuf>,
    /// The sandbox user commands run as [default: the template's].
    #[arg(long = "e2b-user", value_name = "USER")]
    pub e2b_user: Option<String>,
}

/// The upstream API and the real credential.
#[derive(Debug, Clone, Args)]
pub struct UpstreamArgs {
    /// The Paperclip API base URL (without /api).
    #[arg(long, value_name = "URL")]
    #[arg(env = "PAPERCLIP_API_URL", hide_env_values = true)]
    pub api_url: Option<String>,
    /// Read the real API key from this environment variable [default: PAPERCLIP_API_KEY].
    #[arg(long, value_name = "VAR", conflicts_with = "api_key_file")]
    pub api_key_env: Option<String>,
    /// Read the real API key from this file.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Run id sent upstream as X-Paperclip-Run-Id.
    #[arg(long, value_name = "ID")]
    #[arg(env = "PAPERCLIP_RUN_ID", hide_env_values = true)]
    pub run_id: Option<String>,
    /// Upstream request timeout in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub upstream_timeout: u64,
}

/// The gateway binary to upload into the sandbox: the one built for its `uname -m`.
#[derive(Debug, Clone, Args)]
pub struct GatewayBinArg {
    /// One gateway binary for the sandbox, whatever its architecture (an ELF binary for
    /// another one is refused) [default: the one for the sandbox's architecture from
    /// --gateway-dist, else next to this binary].
    #[arg(long, value_name = "PATH", conflicts_with = "gateway_dist")]
    #[arg(env = "PAPERCLIP_BRIDGE_SERVER_BIN", hide_env_values = true)]
    pub gateway_bin: Option<PathBuf>,
    /// A directory laid out as `cargo xtask dist` leaves target/dist
    /// (`DIR/<arch>-unknown-linux-musl/paperclip-bridge-server`); the binary for the
    /// sandbox's `uname -m` is uploaded [default: target/dist, found from this binary].
    #[arg(long, value_name = "DIR")]
    #[arg(env = "PAPERCLIP_BRIDGE_DIST_DIR", hide_env_values = true)]
    pub gateway_dist: Option<PathBuf>,
}

/// Policy and worker tuning.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Policy file (TOML): routes, headers, limits [default: Paperclip's list].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Append every decision as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Requests forwarded at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How the worker reaches the queue.
    #[arg(long, value_enum, default_value = "auto")]
    pub transport: TransportArg,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0
    /// picks one, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl UpstreamArgs {
    /// The upstream, with the key read from where the flags say.
    pub fn upstream(&self) -> Result<Upstream> {
        let url = self.api_url.clone().context(
            "no API URL: pass --api-url URL or set PAPERCLIP_API_URL (Paperclip sets it for \
             process-adapter commands)",
        )?;
        let key = self.api_key()?;
        Upstream::new(
            &url,
            key,
            self.run_id.clone(),
            Duration::from_secs(self.upstream_timeout),
        )
        .with_context(|| format!("--api-url {url:?}"))
    }

    fn api_key(&self) -> Result<Secret> {
        if let Some(file) = &self.api_key_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading --api-key-file {}", file.display()))?;
            let key = text.trim();
            if key.is_empty() {
                bail!("--api-key-file {} is empty", file.display());
            }
            return Ok(Secret::new(key.to_owned()));
        }
        let var = self.api_key_env.as_deref().unwrap_or("PAPERCLIP_API_KEY");
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(Secret::new(key.trim().to_owned())),
            _ => bail!(
                "no API key: {var} is not set (pass --api-key-file FILE or --api-key-env VAR; \
                 Paperclip sets PAPERCLIP_API_KEY for process-adapter commands)"
            ),
        }
    }
}

impl PolicyArgs {
    pub fn policy(&self) -> Result<HostPolicy> {
        match &self.policy {
            Some(path) => HostPolicy::load(path)
                .with_context(|| format!("loading --policy {}", path.display())),
            None => Ok(HostPolicy::default()),
        }
    }
}
