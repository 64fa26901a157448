//! Starting `paperclipai test-drive` in its own process group and waiting until it serves.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::http::Api;
use super::install::{setpriv_args, Install, RunAs};
use super::procs;

/// Bound on the first start (onboarding + 278 migrations take ~25 s here).
const START_LIMIT: Duration = Duration::from_secs(180);
/// What test-drive prints once the company and its CEO agent exist.
const READY_MARK: &str = "Paperclip is ready at http://127.0.0.1:";

/// Starts the server as `user`, logging to `log`; returns its pid (= its process group).
pub fn spawn(install: &Install, user: &RunAs, data_dir: &Path, log: &Path) -> Result<u32> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let node = install.node_bin_dir().join("node");
    let mut command = if user.switch {
        let mut command = Command::new("setpriv");
        command.args(setpriv_args(&user.name)).arg(node);
        command
    } else {
        Command::new(node)
    };
    command
        .arg(install.paperclip_cli())
        .args(["test-drive", "--no-browser", "-d"])
        .arg(data_dir)
        .env_clear()
        .envs(server_env(install, user))
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log handle")?)
        .stderr(log_file)
        // Its own group: `down` can stop it and everything it started, and a Ctrl-C in
        // the terminal that ran `up` does not reach it.
        .process_group(0);
    let child = command.spawn().context("starting paperclipai test-drive")?;
    Ok(child.id())
}

/// A minimal, predictable environment: nothing of ours (tokens, PORT, DATABASE_URL) leaks in.
fn server_env(install: &Install, user: &RunAs) -> Vec<(String, String)> {
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        install.node_bin_dir().display()
    );
    vec![
        ("PATH".into(), path),
        ("HOME".into(), user.home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("LANG".into(), "C.UTF-8".into()),
        ("NO_COLOR".into(), "1".into()),
        // test-drive insists on a model-provider key for its CEO agent; the e2e agent never
        // calls a model (its adapter is switched to an idle process), so a placeholder does.
        ("ANTHROPIC_API_KEY".into(), "placeholder-not-used".into()),
    ]
}

/// Waits (bounded) for the ready line in the log and a healthy `/api/health`; returns the port.
pub fn wait_ready(pid: u32, log: &Path) -> Result<u16> {
    let deadline = Instant::now() + START_LIMIT;
    let port = loop {
        if let Some(port) = ready_port(&std::fs::read_to_string(log).unwrap_or_default()) {
            break port;
        }
        if !procs::alive(pid) {
            bail!("the server exited during start-up");
        }
        if Instant::now() > deadline {
            bail!("the server did not get ready within {START_LIMIT:?}");
        }
        sleep(Duration::from_millis(500));
    };
    while !healthy(port) {
        if Instant::now() > deadline {
            bail!("/api/health on port {port} did not report \"ok\" within {START_LIMIT:?}");
        }
        sleep(Duration::from_millis(500));
    }
    Ok(port)
}

/// The port from test-drive's ready line, if it has been printed.
fn ready_port(log: &str) -> Option<u16> {
    let rest = &log[log.rfind(READY_MARK)? + READY_MARK.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `/api/health` answers `"status":"ok"` (it says "starting" during recovery).
pub fn healthy(port: u16) -> bool {
    Api::board(port)
        .get("/api/health")
        .ok()
        .and_then(|reply| reply.json_ok("health").ok())
        .is_some_and(|health| health["status"] == "ok")
}

/// The last `lines` lines of the log, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_in_the_ready_line() {
        let log = "noise\n◆  Paperclip is ready at http://127.0.0.1:3107.\n";
        assert_eq!(ready_port(log), Some(3107));
        assert_eq!(ready_port("Server 3100\n"), None);
        assert_eq!(ready_port("Paperclip is ready at http://127.0.0.1:"), None);
    }
}
