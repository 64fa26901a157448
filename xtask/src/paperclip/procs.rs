//! Finding and stopping the server's processes through /proc (no libc, no unsafe).
//!
//! The server runs in its own process group, but some children (the embedded PostgreSQL,
//! adapter commands) may detach into groups of their own, so stopping takes the whole
//! descendant tree as well as the group.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long `down` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(20);

/// pid, parent pid and process group of one live (non-zombie) process.
struct Entry {
    pid: u32,
    ppid: u32,
    pgrp: u32,
}

/// All live processes (zombies count as gone: they only wait to be reaped).
fn entries() -> Vec<Entry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            parse_stat(
                pid,
                &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            )
        })
        .collect()
}

/// `/proc/PID/stat`: "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens.
fn parse_stat(pid: u32, stat: &str) -> Option<Entry> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    (state != "Z" && state != "X").then_some(Entry { pid, ppid, pgrp })
}

/// Whether a process with this pid is alive.
pub fn alive(pid: u32) -> bool {
    entries().iter().any(|entry| entry.pid == pid)
}

/// The group `pgid`, plus every descendant of its members, plus `extra` pids.
pub fn family(pgid: u32, extra: &[u32]) -> BTreeSet<u32> {
    let all = entries();
    let mut found: BTreeSet<u32> = all
        .iter()
        // Groups 0 and 1 are the kernel's and init's: never ours.
        .filter(|entry| (pgid > 1 && entry.pgrp == pgid) || extra.contains(&entry.pid))
        .map(|entry| entry.pid)
        .collect();
    loop {
        let before = found.len();
        for entry in &all {
            if found.contains(&entry.ppid) {
                found.insert(entry.pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Whether some process of the family has `marker` in its command line. Guards against a
/// recycled pid: after a reboot the recorded group may belong to someone else.
pub fn family_mentions(pgid: u32, marker: &str) -> bool {
    family(pgid, &[pgid]).iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
    })
}

/// TERM the family, wait up to the grace period, then KILL what is left.
/// Returns how many processes had to be killed.
pub fn stop_family(pgid: u32, extra: &[u32]) -> Result<usize> {
    let targets = family(pgid, extra);
    signal(&targets, "TERM")?;
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if remaining(&targets).is_empty() {
            return Ok(0);
        }
        sleep(Duration::from_millis(200));
    }
    let left = remaining(&targets);
    signal(&left, "KILL")?;
    Ok(left.len())
}

fn remaining(targets: &BTreeSet<u32>) -> BTreeSet<u32> {
    let live: BTreeSet<u32> = entries().iter().map(|entry| entry.pid).collect();
    targets.intersection(&live).copied().collect()
}

/// `kill -SIG pid...`; processes that vanished meanwhile are not an error.
fn signal(pids: &BTreeSet<u32>, name: &str) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running kill -{name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let entry = parse_stat(42, "42 (a (b) c) S 7 42 42 0 -1").unwrap();
        assert_eq!((entry.pid, entry.ppid, entry.pgrp), (42, 7, 42));
        assert!(parse_stat(43, "43 (zombie) Z 1 43 43").is_none());
        assert!(parse_stat(44, "garbage").is_none());
    }

    #[test]
    fn finds_and_stops_a_child_tree() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while family(pid, &[pid]).len() < 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        let tree = family(pid, &[pid]);
        assert!(tree.len() >= 2, "shell and its sleep: {tree:?}");
        assert!(family_mentions(pid, "sleep 30 & wait"));
        assert!(!family_mentions(pid, "no such marker in any command line"));
        stop_family(pid, &[pid]).unwrap();
        child.wait().unwrap();
        assert!(remaining(&tree).is_empty());
    }
}
