//! `cargo xtask paperclip up|down|status`: a real Paperclip server for the e2e suite.

use anyhow::{bail, Result};

pub fn main(args: &[String]) -> Result<()> {
    bail!("paperclip {args:?}: not implemented yet")
}
