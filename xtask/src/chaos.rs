//! `cargo xtask chaos`: the fault matrix (`paperclip-bridge-bench chaos`): faults injected
//! into the bridge's exec channel at set rates, unique mutations through the bridge, every
//! one counted against the upstream. A whole run is recorded in docs/reliability.md; the
//! command fails if any request hung, was applied twice, was applied but reported
//! retryable, or was reported 2xx but never applied, or if a cell injected no faults.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::dist;

pub fn main(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: cargo xtask chaos [--only TRANSPORT:RATE[:start]] [--seconds N] [--concurrency N]");
        return Ok(());
    }
    let binary = dist::build("x86_64-unknown-linux-musl")?;
    crate::run(crate::cargo().args([
        "build",
        "--locked",
        "--profile",
        "fast",
        "-p",
        "bridge-bench",
        "--bin",
        "paperclip-bridge-bench",
    ]))?;
    let cli = crate::target_dir().join("fast/paperclip-bridge-bench");
    let out = Command::new(cli)
        .arg("chaos")
        .args(args)
        .arg("--gateway-bin")
        .arg(binary)
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running paperclip-bridge-bench chaos")?;
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    if args.is_empty() && !report.trim().is_empty() {
        crate::bench::record_in("docs/reliability.md", "chaos", &report)?;
    }
    if !out.status.success() {
        bail!("the fault matrix found requests lost, hung or applied wrongly (or injected no faults): {}", out.status);
    }
    Ok(())
}
