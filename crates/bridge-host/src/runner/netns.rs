//! A real network-isolated sandbox on this machine, made with unprivileged Linux
//! namespaces (no Docker, no root needed).
//!
//! A holder process lives in a new user + network + mount namespace: only a private
//! loopback exists there, and a private tmpfs covers the sandbox's working directory, so
//! the host sees an empty directory where the sandbox sees its files. Every exec enters
//! those namespaces with `nsenter`. This is exactly a remote sandbox's situation: the
//! host's loopback is unreachable, and exec is the only way in.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

use super::exec::{self, base_env, sh_command, with_cwd};
use super::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Process, Runner, RunnerError, Spawn,
};

/// How long the holder may take to set up its namespaces.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Scan-and-kill rounds on destroy.
const KILL_ROUNDS: usize = 5;

/// The holder's set-up: loopback up, private tmpfs on the work dir, report its pid, then
/// live as long as its stdin (our pipe) stays open.
const HOLDER: &str = r#"ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null || { echo "cannot bring up lo" >&2; exit 3; }
mount -t tmpfs -o mode=700 tmpfs "$1" || { echo "cannot mount a private tmpfs on $1" >&2; exit 3; }
echo "ready $$"
exec cat >/dev/null"#;

/// A network-isolated sandbox. Dropping it kills everything inside (best effort); call
/// [`NetnsSandbox::destroy`] to wait for that.
#[derive(Debug)]
pub struct NetnsSandbox {
    holder: std::sync::Mutex<Option<Child>>,
    pid: u32,
    net_ns: String,
    workdir: PathBuf,
}

impl NetnsSandbox {
    /// Creates the sandbox; `workdir` (created if missing) becomes its private directory.
    pub async fn create(workdir: &Path) -> Result<Self, RunnerError> {
        std::fs::create_dir_all(workdir)?;
        let mut command = Command::new("unshare");
        command
            .args(["-rnm", "--fork", "sh", "-c", HOLDER, "sh"])
            .arg(workdir)
            .env_clear()
            .envs(base_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut holder = command.spawn().map_err(|source| RunnerError::Spawn {
            program: "unshare".into(),
            source,
        })?;
        let pid = match tokio::time::timeout(CREATE_TIMEOUT, holder_pid(&mut holder)).await {
            Ok(Some(pid)) => pid,
            outcome => {
                let _ = holder.start_kill();
                let why = if outcome.is_err() {
                    "timed out"
                } else {
                    "failed"
                };
                let stderr = read_stderr(&mut holder).await;
                return Err(RunnerError::SandboxGone(format!(
                    "creating the namespace sandbox {why}: {stderr}"
                )));
            }
        };
        let net_ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))?
            .to_string_lossy()
            .into_owned();
        Ok(Self {
            holder: std::sync::Mutex::new(Some(holder)),
            pid,
            net_ns,
            workdir: workdir.to_path_buf(),
        })
    }

    /// The sandbox's private directory (same path inside and outside, different files).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The pid (on this machine) of the process that holds the namespaces.
    pub fn holder_pid(&self) -> u32 {
        self.pid
    }

    /// Kills every process in the sandbox's network namespace, then the holder.
    pub async fn destroy(&self) {
        self.kill_all();
        let holder = self.holder.lock().ok().and_then(|mut h| h.take());
        if let Some(mut holder) = holder {
            let _ = holder.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), holder.wait()).await;
        }
    }

    /// Kills the processes whose network namespace is the sandbox's (found in /proc), so
    /// detached ones (a gateway started with setsid) die too. Repeats a few rounds: a
    /// process may fork between the scan and the kill.
    fn kill_all(&self) {
        for _ in 0..KILL_ROUNDS {
            let pids = self.members();
            if pids.is_empty() {
                return;
            }
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Live (non-zombie) processes in the sandbox's network namespace.
    fn members(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
            .filter(|pid| self.is_member(pid) && !is_zombie(pid))
            .collect()
    }

    fn is_member(&self, pid: &str) -> bool {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|ns| ns.to_string_lossy() == self.net_ns)
    }

    /// The holder still lives and is still ours (not a recycled pid).
    fn check_alive(&self) -> Result<(), RunnerError> {
        if self.is_member(&self.pid.to_string()) && !is_zombie(&self.pid.to_string()) {
            Ok(())
        } else {
            Err(RunnerError::SandboxGone(format!(
                "the namespace holder {} has exited",
                self.pid
            )))
        }
    }

    fn nsenter(&self, script: String) -> Command {
        let pid = self.pid.to_string();
        let prefix = [
            "nsenter",
            "-t",
            &pid,
            "-U",
            "-n",
            "-m",
            "--preserve-credentials",
        ];
        sh_command(&prefix, script)
    }
}

impl Runner for NetnsSandbox {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            self.check_alive()?;
            let mut command = self.nsenter(with_cwd(&exec.script, exec.cwd.as_deref()));
            command.envs(exec.env);
            exec::run(command, exec.stdin, exec.timeout).await
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            self.check_alive()?;
            let mut command = self.nsenter(with_cwd(&spawn.script, spawn.cwd.as_deref()));
            command.envs(spawn.env);
            exec::open_stream(command)
        })
    }

    fn spawn(&self, spawn: Spawn) -> BoxFuture<'_, Result<Box<dyn Process>, RunnerError>> {
        Box::pin(async move {
            self.check_alive()?;
            let mut command = self.nsenter(with_cwd(&spawn.script, spawn.cwd.as_deref()));
            command.envs(spawn.env);
            exec::spawn_inherited(command, None)
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: true,
            shared_fs: false,
        }
    }
}

impl Drop for NetnsSandbox {
    fn drop(&mut self) {
        self.kill_all();
        if let Ok(mut holder) = self.holder.lock() {
            if let Some(holder) = holder.as_mut() {
                let _ = holder.start_kill();
            }
        }
    }
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

async fn holder_pid(holder: &mut Child) -> Option<u32> {
    let stdout = holder.stdout.take()?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await.ok()??;
    line.strip_prefix("ready ")?.trim().parse().ok()
}

async fn read_stderr(holder: &mut Child) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut text = String::new();
    if let Some(mut stderr) = holder.stderr.take() {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut text)).await;
    }
    text.trim().to_owned()
}
