//! `cargo xtask demo`: the README's main command. Builds the static gateway and the CLI,
//! makes sure bubblewrap is there (the local sandbox), then runs `paperclip-bridge demo`.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{cargo, dist, run, target_dir};

pub fn main(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask demo");
    }
    ensure_bubblewrap()?;
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

/// Installs bubblewrap from Debian's packages when it is missing and we can (root with
/// apt-get); otherwise says how. The bridge itself never falls back to a weaker sandbox.
fn ensure_bubblewrap() -> Result<()> {
    if works("bwrap", &["--version"]) {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root || !works("apt-get", &["--version"]) {
        bail!(
            "the local sandbox needs bubblewrap (`bwrap`), which is not installed: \
             `sudo apt-get install bubblewrap` (Fedora: `sudo dnf install bubblewrap`)"
        );
    }
    eprintln!("demo: installing bubblewrap from Debian's packages (the local sandbox)");
    if run(Command::new("apt-get").args(["install", "-y", "-qq", "bubblewrap"])).is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "bubblewrap"]))
            .context("installing bubblewrap")?;
    }
    Ok(())
}

/// Whether `program args...` runs and exits 0.
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
