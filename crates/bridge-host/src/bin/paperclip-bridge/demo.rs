//! `paperclip-bridge demo`: the whole bridge on this machine, with nothing to set up.
//!
//! The local sandbox (bubblewrap), the bridge, a small built-in *demo upstream* (a stand-in
//! for the Paperclip API that shows what reached it), and a scripted agent inside the
//! sandbox that first proves it cannot reach the host, then makes allowed and denied calls.

mod agent;
pub mod upstream;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::Spawn;
use clap::Args;

pub use agent::{agent, DemoAgentArgs};

use crate::args::{GatewayBinArg, SandboxArgs, SandboxKind};
use crate::sandbox::Sandbox;
use crate::signals::Shutdown;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub gateway: GatewayBinArg,
}

pub async fn demo(args: DemoArgs, mut shutdown: Shutdown) -> Result<ExitCode> {
    let key = format!("demo-real-key-{}", bridge_host::deploy::new_token());
    let upstream = upstream::DemoUpstream::start(key.clone()).await?;
    println!(
        "demo upstream (a stand-in for the Paperclip API) on {}",
        upstream.url()
    );
    let sandbox = Sandbox::open(&SandboxArgs {
        sandbox: SandboxKind::Bwrap,
        exec: None,
        workdir: None,
        // The scripted agent is this very binary: a host file, shown read-only.
        ro_bind: vec![std::env::current_exe().context("finding this binary")?],
        bind: Vec::new(),
        bwrap: bridge_host::runner::bwrap::BWRAP.into(),
        e2b: Default::default(),
    })
    .await?;
    println!(
        "local sandbox (bubblewrap) ready (its files: {})",
        sandbox.workdir.display()
    );
    let outcome = async {
        let upstream_client = Upstream::new(
            &upstream.url(),
            Secret::new(key.clone()),
            Some("demo-run-1".into()),
            Duration::from_secs(10),
        )?;
        let binary = crate::run::gateway_binaries(&args.gateway)?;
        let config = BridgeConfig::new(binary, sandbox.workdir.clone(), upstream_client);
        let started = std::time::Instant::now();
        let bridge = Bridge::start(sandbox.runner.clone(), config)
            .await
            .context("deploying the bridge")?;
        println!(
            "bridge up in {} ms: gateway {} inside the sandbox\n",
            started.elapsed().as_millis(),
            bridge.ready().base_url
        );
        let exe = std::env::current_exe().context("finding this program")?;
        let script = format!(
            "exec {} demo-agent --host-url {}",
            bridge_host::shell::quote(&exe.to_string_lossy()),
            bridge_host::shell::quote(&upstream.url())
        );
        let mut agent = sandbox
            .runner
            .spawn(Spawn {
                script,
                env: bridge.agent_env(),
                cwd: Some(sandbox.workdir.clone()),
            })
            .await?;
        let status = tokio::select! {
            status = agent.wait() => Some(status?),
            _ = shutdown.recv() => { agent.kill(); None }
        };
        bridge.stop().await?;
        anyhow::Ok(status)
    }
    .await;
    sandbox.close().await;
    let status = outcome?;
    println!("\nwhat reached the upstream (the sandbox never saw its credential):");
    for line in upstream.report(&key) {
        println!("  {line}");
    }
    match status {
        Some(s) if s.success() => {
            println!(
                "\ndemo passed: isolation proven, allowed calls answered, denied calls refused"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(_) => {
            println!("\ndemo FAILED: the agent's checks did not all pass (see above)");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::from(130)),
    }
}
