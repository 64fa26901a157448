//! `cargo xtask test`: the README's test command. Unit, integration and end-to-end tests.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run, target_dir};

/// The version of E2B's official Python SDK, the judge of the fake E2B that the E2B
/// runner is tested against.
const E2B_SDK_VERSION: &str = "2.63.0";

pub fn main(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask test");
    }
    // Host tests deploy the real gateway binary into sandboxes: build it first and tell
    // them where it is.
    run(cargo().args(["build", "--locked", "-p", "bridge-server"]))?;
    let gateway = target_dir().join("debug/paperclip-bridge-server");
    let python = e2b_sdk()?;
    run(cargo()
        .args(["test", "--workspace", "--locked"])
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", &gateway)
        .env("PAPERCLIP_BRIDGE_E2B_PYTHON", &python))?;
    crate::e2e::main(&[])
}

/// A virtual environment under `target/` with E2B's SDK (made once, checked each time).
fn e2b_sdk() -> Result<std::path::PathBuf> {
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
