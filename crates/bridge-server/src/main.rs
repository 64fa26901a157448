//! paperclip-bridge-server: the in-sandbox gateway binary, configured by the queue_v1
//! environment (`PAPERCLIP_BRIDGE_*`). Exit codes: 0 after a clean stop, 1 when it cannot
//! start (bind, queue), 2 for bad configuration.

use std::process::ExitCode;

use bridge_protocol::env::GatewayConfig;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = bridge_server::cli::dispatch(&args) {
        return code;
    }
    if !args.is_empty() {
        eprintln!(
            "paperclip-bridge-server: unknown command {:?} (take, put, session, or none to serve)",
            args[0]
        );
        return ExitCode::from(2);
    }
    // Logs go to stderr (the deployer appends them to `logs/bridge.log`).
    bridge_server::init_tracing();
    // Before any connection: a flood should meet the connection cap, not EMFILE.
    bridge_server::fdlimit::raise_and_log();
    let config = match GatewayConfig::from_lookup(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("paperclip-bridge-server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paperclip-bridge-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config));
    // `run` has joined every gateway task; do not wait for idle blocking threads at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn serve(config: GatewayConfig) -> ExitCode {
    let (listener, state, ready) = match bridge_server::start(config).await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("paperclip-bridge-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(url = %ready.base_url, pid = ready.pid, "listening");
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("paperclip-bridge-server: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    bridge_server::run(listener, state, stop).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
