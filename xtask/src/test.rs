//! `cargo xtask test`: the README's test command. Unit, integration and end-to-end tests.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run, target_dir};

/// The version of E2B's official Python SDK, the judge of the fake E2B that the E2B
/// runner is tested against.
const E2B_SDK_VERSION: &str = "2.63.0";

/// Where Debian's qemu-user-static puts the aarch64 emulator.
const QEMU_AARCH64: &str = "qemu-aarch64-static";

pub fn main(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask test");
    }
    // Host tests deploy the real gateway binary into sandboxes: build it first and tell
    // them where it is.
    run(cargo().args(["build", "--locked", "-p", "bridge-server"]))?;
    let gateway = target_dir().join("debug/paperclip-bridge-server");
    let aarch64 = aarch64_gateway()?;
    let python = e2b_sdk()?;
    let mut tests = cargo();
    tests
        .args(["test", "--workspace", "--locked"])
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", &gateway)
        .env("PAPERCLIP_BRIDGE_E2B_PYTHON", &python);
    if let Some((binary, qemu)) = &aarch64 {
        // The aarch64 sandbox test (crates/bridge-host/tests/arch.rs) deploys this one.
        tests
            .env("PAPERCLIP_BRIDGE_SERVER_AARCH64_BIN", binary)
            .env("PAPERCLIP_BRIDGE_QEMU_AARCH64", qemu);
    }
    run(&mut tests)?;
    if let Some((binary, qemu)) = &aarch64 {
        eprintln!("test: the gateway's HTTP tests against the aarch64 build, under {QEMU_AARCH64}");
        run(cargo()
            .args([
                "test",
                "--locked",
                "-p",
                "bridge-server",
                "--test",
                "gateway",
            ])
            .env("BRIDGE_GATEWAY_BIN", binary)
            .env("BRIDGE_GATEWAY_RUNNER", qemu))
        .context("the gateway's HTTP tests under qemu-user (aarch64)")?;
    }
    crate::e2e::main(&[])
}

/// The static aarch64 gateway (`cargo xtask dist`) and qemu-user to run it. Both must be
/// there in CI; elsewhere their tests may be skipped, and say so.
fn aarch64_gateway() -> Result<Option<(PathBuf, PathBuf)>> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let Some(qemu) = which(QEMU_AARCH64) else {
        let why =
            format!("{QEMU_AARCH64} is not installed (Debian: apt-get install qemu-user-static)");
        if ci {
            bail!("CI runs the aarch64 gateway's tests, but {why}");
        }
        eprintln!("test: SKIPPING the aarch64 gateway's tests: {why}");
        return Ok(None);
    };
    match crate::dist::build(crate::dist::AARCH64_TARGET) {
        Ok(binary) => Ok(Some((binary, qemu))),
        Err(e) if !ci => {
            eprintln!("test: SKIPPING the aarch64 gateway's tests: no aarch64 build: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e.context("CI runs the aarch64 gateway's tests: building it")),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// A virtual environment under `target/` with E2B's SDK (made once, checked each time).
fn e2b_sdk() -> Result<PathBuf> {
    let venv = target_dir().join("e2b-sdk");
    let python = venv.join("bin/python");
    let has_sdk = |python: &std::path::Path| {
        let probe = format!(
            "import e2b, importlib.metadata as m; assert m.version('e2b') == '{E2B_SDK_VERSION}'"
        );
        Command::new(python)
            .args(["-c", &probe])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_sdk(&python) {
        return Ok(python);
    }
    let sdk = format!("e2b=={E2B_SDK_VERSION}");
    eprintln!(
        "installing E2B's Python SDK ({sdk}) into {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("making a Python venv (Debian: apt-get install python3-venv)")?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", &sdk]))
        .context("installing E2B's SDK from PyPI")?;
    if !has_sdk(&python) {
        bail!("E2B's SDK does not import in {}", venv.display());
    }
    Ok(python)
}
