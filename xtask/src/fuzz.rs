//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer).
//!
//! `--smoke` runs every target briefly over its committed corpus (what CI does); new inputs
//! go to a scratch directory, so a smoke run never changes the repository. `TARGET
//! [SECONDS]` is a long run that grows the committed corpus and then minimises it
//! (`cargo fuzz cmin`). Both install what they need: a nightly toolchain and cargo-fuzz.
//! A crash fails the run; libFuzzer leaves the input under `fuzz/artifacts/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{run, workspace_root};

/// Every target and the dictionary it uses (`fuzz/dict/`).
const TARGETS: &[(&str, &str)] = &[
    ("canonical_path", "http.dict"),
    ("check_request", "json.dict"),
    ("session_wire", "json.dict"),
    ("gateway_request", "http.dict"),
];

/// Seconds per target in a smoke run.
const SMOKE_SECONDS: u32 = 20;

/// Seconds of a long run when none are given.
const LONG_SECONDS: u32 = 600;

/// One input may take this long before libFuzzer calls it a hang (seconds).
const INPUT_TIMEOUT_SECONDS: u32 = 10;

pub fn main(args: &[String]) -> Result<()> {
    let long_usage = "usage: cargo xtask fuzz --smoke | cargo xtask fuzz TARGET [SECONDS]";
    match args {
        [flag] if flag == "--smoke" => smoke(),
        [target] => long(target, LONG_SECONDS),
        [target, seconds] => long(target, seconds.parse().context(long_usage)?),
        _ => bail!("{long_usage}"),
    }
}

fn smoke() -> Result<()> {
    prepare()?;
    for (target, dict) in TARGETS {
        let scratch = tempfile::tempdir().context("a scratch corpus directory")?;
        let stats = fuzz(
            target,
            dict,
            SMOKE_SECONDS,
            &[scratch.path(), &corpus(target)],
        )?;
        println!("fuzz smoke: {target}: {stats}");
    }
    Ok(())
}

fn long(target: &str, seconds: u32) -> Result<()> {
    let Some((_, dict)) = TARGETS.iter().find(|(name, _)| *name == target) else {
        let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        bail!(
            "unknown fuzz target {target:?}; the targets: {}",
            names.join(", ")
        );
    };
    prepare()?;
    let stats = fuzz(target, dict, seconds, &[&corpus(target)])?;
    println!("fuzz: {target}: {seconds} s: {stats}");
    run(nightly().args(["fuzz", "cmin", "--sanitizer", "none", target]))
        .context("minimising the corpus")?;
    let files = std::fs::read_dir(corpus(target))?.count();
    println!("fuzz: {target}: corpus minimised to {files} files");
    Ok(())
}

fn corpus(target: &str) -> PathBuf {
    workspace_root().join("fuzz/corpus").join(target)
}

/// Installs the nightly toolchain and cargo-fuzz when missing, and builds the targets.
fn prepare() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nightly {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain (cargo-fuzz needs it)")?;
    }
    let has_cargo_fuzz = nightly()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_fuzz {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz from crates.io")?;
    }
    run(nightly().args(["fuzz", "build", "--sanitizer", "none"]))
        .context("building the fuzz targets")
}

/// `cargo fuzz` on the nightly toolchain, with the variables of the stable cargo that runs
/// xtask removed (they would pin the child to stable).
fn nightly() -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", "cargo"]);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(var);
    }
    command.current_dir(workspace_root());
    command
}

/// Runs one target for `seconds` over `dirs` (new inputs go to the first) and returns its
/// final figures.
fn fuzz(target: &str, dict: &str, seconds: u32, dirs: &[&Path]) -> Result<Stats> {
    let dict = workspace_root().join("fuzz/dict").join(dict);
    let mut command = nightly();
    command
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .args(dirs)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-dict={}", dict.display()))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    let output = command
        .output()
        .with_context(|| format!("running fuzz target {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("fuzz target {target} failed ({}):\n{log}", output.status);
    }
    Stats::read(&log).with_context(|| format!("reading {target}'s figures from:\n{log}"))
}

/// What a run reports at its end.
#[derive(Debug, PartialEq, Eq)]
struct Stats {
    execs: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
}

impl Stats {
    /// The executions from `-print_final_stats`, the rest from the last status line
    /// (`#N  DONE  cov: C ft: F corp: K/...`).
    fn read(log: &str) -> Option<Stats> {
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))?
            .trim()
            .parse()
            .ok()?;
        let status = log.lines().rev().find(|l| l.contains(" cov: "))?;
        let field = |name: &str| -> Option<u64> {
            let rest = status.split(name).nth(1)?.trim_start();
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        Some(Stats {
            execs,
            coverage: field(" cov:")?,
            features: field(" ft:")?,
            corpus: field(" corp:")?,
        })
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Stats {
            execs,
            coverage,
            features,
            corpus,
        } = self;
        write!(
            f,
            "{execs} execs, cov {coverage}, ft {features}, corpus {corpus}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_final_lines() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #9000\tDONE   cov: 465 ft: 1979 corp: 378/9Kb lim: 4096 exec/s: 30 rss: 60Mb\n\
                   Done 9000 runs in 301 second(s)\n\
                   stat::number_of_executed_units: 9001\n\
                   stat::average_exec_per_sec:     29\n";
        let expected = Stats {
            execs: 9001,
            coverage: 465,
            features: 1979,
            corpus: 378,
        };
        assert_eq!(Stats::read(log), Some(expected));
        assert_eq!(Stats::read("no figures"), None);
    }
}
