//! `cargo xtask test`: the README's test command. Unit, integration and end-to-end tests.

use anyhow::{bail, Result};

use crate::{cargo, run, target_dir};

pub fn main(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask test");
    }
    // Host tests deploy the real gateway binary into sandboxes: build it first and tell
    // them where it is.
    run(cargo().args(["build", "--locked", "-p", "bridge-server"]))?;
    let gateway = target_dir().join("debug/paperclip-bridge-server");
    run(cargo()
        .args(["test", "--workspace", "--locked"])
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", &gateway))?;
    crate::e2e::main(&[])
}
