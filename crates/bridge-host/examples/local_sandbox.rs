//! A bridge into a local namespace sandbox (bubblewrap): deploy it, make one agent call
//! from inside the sandbox, print the answer, take it all down.
//!
//! ```sh
//! cargo xtask dist    # the static gateway; a debug build (`cargo build -p bridge-server`)
//!                     # works too, but its tens of MB take seconds to upload
//! UPSTREAM_API_KEY=... cargo run -p bridge-host --example local_sandbox -- \
//!     target/dist/x86_64-unknown-linux-musl/paperclip-bridge-server http://127.0.0.1:3100
//! ```
//!
//! The key stays on the host (an environment variable, never an argument): the sandbox sees
//! only the gateway's URL and a bridge token, and has no network path to the API.

use std::{env, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{BwrapSandbox, Exec, Runner};

/// The agent: one call through the gateway, with curl, inside the sandbox.
const AGENT: &str = r#"curl -sS -w ' (HTTP %{http_code})\n' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/agents/me""#;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let [gateway, api_url] = args.as_slice() else {
        bail!("usage: local_sandbox GATEWAY_BINARY API_URL (the key in UPSTREAM_API_KEY)");
    };
    let key = Secret::new(env::var("UPSTREAM_API_KEY").context("UPSTREAM_API_KEY")?);
    let upstream = Upstream::new(api_url, key, None, Duration::from_secs(30))?;
    let dir = tempfile::tempdir()?; // the sandbox's private directory
    let sandbox = Arc::new(BwrapSandbox::create(dir.path()).await?);
    let config = BridgeConfig::new(
        std::path::PathBuf::from(gateway),
        dir.path().into(),
        upstream,
    );
    let bridge = Bridge::start(sandbox.clone(), config).await?;

    // The agent gets the bridge's variables only: the gateway URL and the bridge token.
    let mut agent = Exec::new(AGENT, Duration::from_secs(30)).cwd(dir.path());
    agent.env = bridge.agent_env();
    let answer = sandbox.exec(agent).await;

    bridge.stop().await?;
    sandbox.destroy().await;
    let answer = answer?;
    print!("{}", String::from_utf8_lossy(&answer.stdout));
    ensure!(
        answer.success(),
        "the agent failed: {}",
        answer.stderr_text()
    );
    Ok(())
}
