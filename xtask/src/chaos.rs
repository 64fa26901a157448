//! `cargo xtask chaos`: the fault matrix (`paperclip-bridge-bench chaos`): faults injected
//! into the bridge's exec channel at set rates, unique mutations through the bridge, every
//! one counted against the upstream. A whole run is recorded in docs/reliability.md; the
//! command fails if any request hung, was applied twice, was applied but reported
//! retryable, or was reported 2xx but never applied, or if a cell injected no faults.

use anyhow::{bail, Result};

pub fn main(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: cargo xtask chaos [--only TRANSPORT:RATE[:start]] [--seconds N] [--concurrency N]");
        return Ok(());
    }
    // Faults make the bridge warn all the time: only errors are worth showing.
    let (report, ok) = crate::bench::run_bench_binary("chaos", args, "error")?;
    if args.is_empty() && !report.trim().is_empty() {
        crate::bench::record_in("docs/reliability.md", "chaos", &report)?;
    }
    if !ok {
        bail!(
            "the fault matrix found requests lost, hung or applied wrongly (or injected no faults)"
        );
    }
    Ok(())
}
