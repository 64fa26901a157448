//! `cargo xtask demo`: the README's main command. Builds the static gateway and the CLI,
//! then runs `paperclip-bridge demo` (a local network-isolated sandbox, nothing to set up).

use anyhow::{bail, Result};

use crate::{cargo, dist, run, target_dir};

pub fn main(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask demo");
    }
    let gateway = dist::build("x86_64-unknown-linux-musl")?;
    run(cargo().args([
        "build",
        "--locked",
        "-p",
        "bridge-host",
        "--bin",
        "paperclip-bridge",
    ]))?;
    let cli = target_dir().join("debug/paperclip-bridge");
    run(std::process::Command::new(cli)
        .arg("demo")
        .arg("--gateway-bin")
        .arg(gateway))
}
