//! paperclip-bridge-bench: the bridge benchmark (`bench`, run by `cargo xtask bench
//! bridge`) and its load generator (`load`, which the benchmark runs inside each sandbox as
//! an agent), and the fault matrix (`chaos`, run by `cargo xtask chaos`). Kept out of the
//! shipped `paperclip-bridge` binary.

mod bench;
mod bench_scale;
mod chaos;
mod chaos_runner;
mod large;
mod load;
/// The demo's stand-in upstream, shared with the shipped CLI's `demo` (one source file).
/// The bench reads no report of what reached it: that part is the demo's.
#[allow(dead_code)]
#[path = "../../../crates/bridge-host/src/bin/paperclip-bridge/demo/upstream.rs"]
mod upstream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The bridge benchmark.
#[derive(Debug, Parser)]
#[command(name = "paperclip-bridge-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The benchmark matrix, or `--scale` (run it with `cargo xtask bench bridge`).
    Bench(bench::BenchArgs),
    /// The load generator (runs inside the sandbox).
    Load(load::LoadArgs),
    /// The fault matrix (run it with `cargo xtask chaos`).
    Chaos(chaos::ChaosArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    bridge_server::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paperclip-bridge-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Bench(args) => bench::bench(args).await,
            Command::Load(args) => load::load(args).await,
            Command::Chaos(args) => chaos::chaos(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paperclip-bridge-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
