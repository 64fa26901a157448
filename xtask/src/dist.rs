//! `cargo xtask dist`: the static gateway binaries that ship into sandboxes.
//!
//! Builds `paperclip-bridge-server` for the x86_64 and aarch64 musl targets (or the one
//! `--target` names) with the size-optimised release profile, copies each to
//! `target/dist/<target>/` with a `.sha256` beside it, prints its size and checks that it
//! is statically linked (no ELF interpreter), built for the target's machine and at most
//! [`MAX_BYTES`]. aarch64 links with Rust's own `rust-lld` (`.cargo/config.toml`): musl's
//! start files and libc come with the rustup target, so no cross gcc is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run, target_dir};

const BINARY: &str = "paperclip-bridge-server";
const DEFAULT_TARGET: &str = "x86_64-unknown-linux-musl";
/// The aarch64 build: sandboxes on ARM machines (Graviton, Ampere, Apple silicon VMs).
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-musl";
const GNU_FALLBACK: &str = "x86_64-unknown-linux-gnu";
/// The most a shipped gateway may weigh: it is uploaded into every sandbox.
const MAX_BYTES: u64 = 3 * 1024 * 1024;

pub fn main(args: &[String]) -> Result<()> {
    let targets = match args {
        [] => vec![DEFAULT_TARGET.to_owned(), AARCH64_TARGET.to_owned()],
        [flag, target] if flag == "--target" => vec![target.clone()],
        _ => bail!("usage: cargo xtask dist [--target TRIPLE]"),
    };
    for target in targets {
        let path = build(&target)?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Builds the gateway for `target` (falling back as machine-facts says) and returns the
/// path of the copied binary.
pub fn build(target: &str) -> Result<PathBuf> {
    let target = prepare_target(target)?;
    let mut cargo = cargo();
    cargo
        .args(["build", "--release", "--locked", "-p", "bridge-server"])
        .args(["--bin", BINARY, "--target", &target]);
    if target == GNU_FALLBACK {
        // The gateway needs no DNS, so glibc's static-linking caveats do not bite.
        cargo.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    run(&mut cargo).with_context(|| format!("building {BINARY} for {target}"))?;
    let built = target_dir().join(&target).join("release").join(BINARY);
    let dist_dir = target_dir().join("dist").join(&target);
    std::fs::create_dir_all(&dist_dir).context("creating target/dist")?;
    let out = dist_dir.join(BINARY);
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    check_static(&out, &target)?;
    let size = std::fs::metadata(&out)?.len();
    if size > MAX_BYTES {
        bail!(
            "{} is {size} bytes, over the {MAX_BYTES}-byte (3 MiB) bound for a shipped gateway",
            out.display()
        );
    }
    write_sha256(&out)?;
    eprintln!(
        "dist: {} ({} bytes, {:.2} MiB, statically linked, target {target})",
        out.display(),
        size,
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(out)
}

/// Makes sure the rustup target is there.
fn prepare_target(target: &str) -> Result<String> {
    if installed_targets()?.iter().any(|t| t == target) {
        return Ok(target.to_owned());
    }
    eprintln!("dist: adding rustup target {target}");
    let added = Command::new("rustup")
        .args(["target", "add", target])
        .status();
    match added {
        Ok(status) if status.success() => Ok(target.to_owned()),
        _ if target == DEFAULT_TARGET => {
            eprintln!(
                "dist: WARNING: could not add {target}; falling back to {GNU_FALLBACK} \
                 with +crt-static (also fully static)"
            );
            Ok(GNU_FALLBACK.to_owned())
        }
        _ => bail!("could not add rustup target {target} (try: rustup target add {target})"),
    }
}

fn installed_targets() -> Result<Vec<String>> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (is it installed?)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect())
}

/// A statically linked ELF has no `PT_INTERP` program header (static-pie keeps
/// `PT_DYNAMIC` for self-relocation, but needs no loader); its `e_machine` must be the
/// target's (a linker mix-up would ship the wrong machine's code under its name).
pub fn check_static(path: &Path, target: &str) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let machine = match target.split('-').next() {
        Some("x86_64") => Some(62),
        Some("aarch64") => Some(183),
        _ => None,
    };
    if machine.is_some_and(|m| m != u16_at(0x12)) {
        bail!(
            "{} is an ELF file for machine {}, not for {target}",
            path.display(),
            u16_at(0x12)
        );
    }
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let header = bytes
            .get(at..at + 4)
            .context("truncated ELF program headers")?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(header.try_into()?) == PT_INTERP {
            bail!(
                "{} needs a dynamic loader (PT_INTERP): it is not static",
                path.display()
            );
        }
    }
    Ok(())
}

fn write_sha256(path: &Path) -> Result<()> {
    let out = Command::new("sha256sum")
        .arg(path.file_name().context("binary has no file name")?)
        .current_dir(path.parent().context("binary has no folder")?)
        .output()
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut sum = path.as_os_str().to_owned();
    sum.push(".sha256");
    std::fs::write(&sum, &out.stdout).context("writing the .sha256 file")?;
    Ok(())
}
