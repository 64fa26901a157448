//! xtask: project automation (`cargo xtask <task>`): static builds, Paperclip, benchmarks.

mod bench;
mod chaos;
mod demo;
mod dist;
mod e2e;
mod fuzz;
mod paperclip;
mod progress;
mod test;

use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  bench gateway                 gateway latency, memory and size (docs/benchmarks.md)
  bench bridge [--scale] [--transport NAME]
                                the whole bridge (paperclip-bridge-bench); whole runs are
                                recorded in docs/benchmarks.md
  chaos [--only CELL] [--seconds N]
                                the fault matrix: faults injected into the bridge's exec
                                channel, every mutation counted (docs/reliability.md)
  demo                          the bridge end to end in a local isolated sandbox
  dist [--target TRIPLE]        build the static gateway binary into target/dist/<target>/
  fuzz --smoke | fuzz TARGET [SECONDS]
                                the cargo-fuzz targets in fuzz/ (nightly): a short run of
                                each, or a long one that grows and minimises the corpus
  paperclip up|seed|down|status a real Paperclip server for the e2e suite
  e2e                           the end-to-end suite against a real Paperclip server
  test                          all tests (unit, integration, end-to-end)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match task.as_str() {
        "bench" => bench::main(rest),
        "chaos" => chaos::main(rest),
        "demo" => demo::main(rest),
        "dist" => dist::main(rest),
        "e2e" => e2e::main(rest),
        "fuzz" => fuzz::main(rest),
        "paperclip" => paperclip::main(rest),
        "test" => test::main(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Runs a command with inherited output; an unsuccessful exit is an error naming it.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", command.get_program());
    }
    Ok(())
}

/// `cargo` (the one running us, when known) in the workspace root.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
