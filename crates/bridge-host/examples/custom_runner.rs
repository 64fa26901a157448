//! A [`Runner`] for a made-up provider, and a bridge deployed through it.
//!
//! "ShellBox" stands for a provider whose API runs one command in a sandbox and hands back
//! its exit code and output, as most providers' exec APIs do. Here a sandbox is a private
//! temporary directory and a command is `sh -c` on this machine: it isolates nothing, it
//! only shows the shape. A real runner calls its provider's API in `exec`, and implements
//! `stream` (one long-lived exec: the bridge then keeps one session open instead of an exec
//! per batch) and `upload` (a file API) when the provider has them.
//!
//! ```sh
//! cargo xtask dist    # the static gateway; a debug build (`cargo build -p bridge-server`)
//!                     # works too, but its tens of MB take seconds to upload
//! UPSTREAM_API_KEY=... cargo run -p bridge-host --example custom_runner -- \
//!     target/dist/x86_64-unknown-linux-musl/paperclip-bridge-server http://127.0.0.1:3100
//! ```

use std::process::Stdio;
use std::{env, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{self, BoxFuture, Capabilities, Exec, ExecOutput, ExecStream};
use bridge_host::runner::{Runner, RunnerError, Spawn};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

/// The made-up provider's sandbox: a private directory, commands run with `sh -c`.
#[derive(Debug)]
struct ShellBox {
    dir: tempfile::TempDir,
}

impl Runner for ShellBox {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(self.run(exec))
    }

    fn stream(&self, _: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async { Err(RunnerError::NoStreaming) })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default() // exec only: no streaming, no file API, not shared files
    }
}

impl ShellBox {
    /// The provider's "run this command" call: a clean environment plus the exec's own
    /// variables (where the bridge puts its inputs), stdin fed, output bounded.
    async fn run(&self, exec: Exec) -> Result<ExecOutput, RunnerError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&exec.script)
            .current_dir(exec.cwd.as_deref().unwrap_or(self.dir.path()))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(exec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true) // so a timed-out command is killed
            .spawn()
            .map_err(|source| RunnerError::Spawn {
                program: "sh".into(),
                source,
            })?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let input = exec.stdin;
        let run = async {
            let feed = async move {
                if let Some(mut stdin) = stdin {
                    // A script that does not read its stdin closes the pipe: not an error.
                    let _ = stdin.write_all(&input).await;
                } // dropped here: the script sees the end of its input
            };
            let (_, stdout, stderr, status) = tokio::join!(
                feed,
                read_bounded(stdout, runner::MAX_OUTPUT),
                read_bounded(stderr, runner::MAX_ERROR_OUTPUT),
                child.wait(),
            );
            Ok::<_, RunnerError>((status?, stdout?, stderr?))
        };
        match tokio::time::timeout(exec.timeout, run).await {
            Ok(done) => {
                let (status, stdout, stderr) = done?;
                Ok(ExecOutput {
                    code: status.code(),
                    stdout,
                    stderr,
                    timed_out: false,
                })
            }
            Err(_) => Ok(ExecOutput {
                timed_out: true,
                ..ExecOutput::default()
            }),
        }
    }
}

/// Everything from the sandbox is bounded before it costs memory.
async fn read_bounded(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        pipe.take(limit as u64).read_to_end(&mut bytes).await?;
    }
    Ok(bytes)
}

const AGENT: &str = r#"curl -sS -w ' (HTTP %{http_code})\n' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/agents/me""#;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let [gateway, api_url] = args.as_slice() else {
        bail!("usage: custom_runner GATEWAY_BINARY API_URL (the key in UPSTREAM_API_KEY)");
    };
    let key = Secret::new(env::var("UPSTREAM_API_KEY").context("UPSTREAM_API_KEY")?);
    let upstream = Upstream::new(api_url, key, None, Duration::from_secs(30))?;
    let sandbox = Arc::new(ShellBox {
        dir: tempfile::tempdir()?,
    });
    let dir = sandbox.dir.path().to_path_buf();
    // Without streaming, the bridge reaches the queue with one exec per batch.
    let bridge = Bridge::start(
        sandbox.clone(),
        BridgeConfig::new(std::path::PathBuf::from(gateway), dir, upstream),
    )
    .await?;

    let mut agent = Exec::new(AGENT, Duration::from_secs(30));
    agent.env = bridge.agent_env();
    let answer = sandbox.exec(agent).await;
    bridge.stop().await?;
    let answer = answer?;
    print!("{}", String::from_utf8_lossy(&answer.stdout));
    ensure!(
        answer.success(),
        "the agent failed: {}",
        answer.stderr_text()
    );
    Ok(())
}
