//! The local sandbox: bubblewrap (`bwrap`, the tool Flatpak uses) on this machine.
//!
//! `bwrap --unshare-all` starts a holder in new user, mount, network, PID, IPC, UTS and
//! cgroup namespaces, on a private root that holds only a read-only `/usr` (and the
//! `/bin`, `/lib*`, `/sbin` that point into it), a few harmless `/etc` files, a fresh
//! `/proc` and `/tmp`, a `/dev` of five harmless devices (no terminal), and a private
//! tmpfs at the working directory: no host home,
//! no host socket, no host process, no key file. Every exec enters the holder's namespaces
//! and root with `nsenter` and drops every capability (`setpriv`) before running `sh`, so
//! it is exactly as confined as the holder. The host's loopback is unreachable: exec is
//! the only way in, as with a remote sandbox.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::process::{Child, Command};

use super::exec::{self, sh_command, with_cwd};
use super::{BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Runner, RunnerError, Spawn};

/// The holder: says it is ready (on stderr: bubblewrap's `--info-fd 1` takes stdout),
/// then lives as long as its stdin, our pipe, stays open.
const HOLDER: &str = "echo ready >&2; exec cat >/dev/null";

/// How long bubblewrap may take to set up the sandbox.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `destroy` waits for the sandbox's processes to be gone.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes read of bubblewrap's start-up report (a small JSON object).
const MAX_INFO: u64 = 64 * 1024;

/// What the sandbox's PATH is (the host's PATH names host directories).
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The bubblewrap program's usual name.
pub const BWRAP: &str = "bwrap";

/// Top-level host entries that merged-/usr systems make links into `/usr`; each is
/// recreated as the same link, or bound read-only where it is a real directory.
const SYSTEM_DIRS: [&str; 6] = ["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// The device nodes the sandbox gets. Not bubblewrap's `--dev`: its `/dev/tty` would be
/// the host's terminal for a process entered with `nsenter` (keystrokes pushed with
/// TIOCSTI), and for an ordinary user its devpts mount makes bubblewrap nest a second user
/// namespace, which `nsenter` then cannot join.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The usual links in `/dev`.
const DEV_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Host `/etc` entries the sandbox sees, read-only, where they exist: what dynamic
/// linking, Debian's alternatives, locales, time zones and TLS roots need. Nothing with a
/// secret or a host identity (`shadow`, `ssh`, `machine-id`, `hostname`) is among them.
const ETC_PASSTHROUGH: [&str; 9] = [
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "ssl",
    "ca-certificates",
    "nsswitch.conf",
    "os-release",
];

/// `nsenter`'s options after `-t PID`: the holder's user, mount, network, PID, IPC and UTS
/// namespaces, its root and its working directory, our uid and gid as they are. Not its
/// cgroup namespace: an ordinary user may not join it, and no cgroup fs is mounted inside.
const NSENTER: [&str; 10] = [
    "-U",
    "-m",
    "-n",
    "-p",
    "-i",
    "-u",
    "-r",
    "-w",
    "--preserve-credentials",
    "--",
];

/// Run inside, before `sh`: drops every capability, the bounding set included, and
/// forbids gaining any (as root, entering the user namespace grants them all).
const SETPRIV: [&str; 4] = [
    "setpriv",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--no-new-privs",
];

/// The programs the sandbox's holder and every exec run inside, besides `sh`.
const HOLDER_TOOLS: [&str; 2] = ["cat", SETPRIV[0]];

/// Where a program the runner needs must be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSide {
    /// On this machine, where the runner starts it.
    Host,
    /// Inside the sandbox (the host's `/usr`, read-only).
    Sandbox,
}

/// A program the runner runs, and where it was found (if it was).
#[derive(Debug, Clone)]
pub struct Tool {
    /// Its name (or the path given for bubblewrap).
    pub name: String,
    /// Where it must be.
    pub side: ToolSide,
    /// Where it is, looked up as the runner looks it up; `None`: missing.
    pub found: Option<PathBuf>,
}

/// Every program this runner starts, with `bwrap` as the bubblewrap program, each looked
/// up the way the runner finds it: bubblewrap and the sandbox's own programs in
/// [`SANDBOX_PATH`] (the sandbox's `/usr` is the host's), `nsenter` in the exec PATH
/// (the host's plus the system directories), `kill` in the host's PATH. `also` names
/// more programs needed inside (a deployment's scripts').
pub fn tools(bwrap: &Path, also: &[&str]) -> Vec<Tool> {
    let host_path = std::env::var("PATH").unwrap_or_default();
    let mut tools = vec![
        tool(&bwrap.to_string_lossy(), ToolSide::Host, SANDBOX_PATH),
        tool("nsenter", ToolSide::Host, &exec::sandbox_path()),
        tool("kill", ToolSide::Host, &host_path),
    ];
    let inside = ["sh"]
        .into_iter()
        .chain(HOLDER_TOOLS)
        .chain(also.iter().copied());
    for name in inside {
        if !tools
            .iter()
            .any(|t| t.name == name && t.side == ToolSide::Sandbox)
        {
            tools.push(tool(name, ToolSide::Sandbox, SANDBOX_PATH));
        }
    }
    tools
}

fn tool(name: &str, side: ToolSide, path: &str) -> Tool {
    Tool {
        name: name.to_owned(),
        side,
        found: find_program(name, path),
    }
}

/// `name` as `execvp` finds it in `path` (a name with a `/` is taken as it is).
pub fn find_program(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
}

/// Host paths the agent needs beyond the defaults (e.g. a checkout to work on).
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    /// Bound read-only at the same path inside.
    pub read_only: Vec<PathBuf>,
    /// Bound read-write at the same path inside.
    pub writable: Vec<PathBuf>,
}

/// A sandbox made with bubblewrap. Dropping it kills everything inside; call
/// [`BwrapSandbox::destroy`] to wait for that.
#[derive(Debug)]
pub struct BwrapSandbox {
    holder: std::sync::Mutex<Option<Child>>,
    pid: u32,
    pid_ns: String,
    workdir: PathBuf,
    /// Host directory holding the sandbox's own `/etc/passwd`, `group` and `hosts`.
    etc: PathBuf,
}

impl BwrapSandbox {
    /// Creates the sandbox with the default mounts; `workdir` becomes its private
    /// directory (the host sees an empty directory there).
    pub async fn create(workdir: &Path) -> Result<Self, RunnerError> {
        Self::create_with(workdir, &Mounts::default()).await
    }

    /// Creates the sandbox with `mounts` on top of the defaults.
    pub async fn create_with(workdir: &Path, mounts: &Mounts) -> Result<Self, RunnerError> {
        Self::create_using(Path::new(BWRAP), workdir, mounts).await
    }

    /// Like [`BwrapSandbox::create_with`], with this bubblewrap program (a bare name is
    /// looked up in [`SANDBOX_PATH`], as every program the runner starts).
    pub async fn create_using(
        program: &Path,
        workdir: &Path,
        mounts: &Mounts,
    ) -> Result<Self, RunnerError> {
        std::fs::create_dir_all(workdir)?;
        let etc = write_etc(workdir)?;
        let mut command = Command::new(program);
        command
            .args(bwrap_args(workdir, &etc, mounts)?)
            .args(["--", "sh", "-c", HOLDER])
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut holder = command
            .spawn()
            .map_err(|e| missing_bwrap(&e, program, &etc))?;
        let outcome = tokio::time::timeout(CREATE_TIMEOUT, started(&mut holder)).await;
        let pid = outcome
            .unwrap_or_else(|_| Err("timed out".into()))
            .map_err(|why| {
                let _ = holder.start_kill();
                let _ = std::fs::remove_dir_all(&etc);
                RunnerError::SandboxGone(format!("creating the bubblewrap sandbox failed: {why}"))
            })?;
        let pid_ns = ns_of(pid, "pid").unwrap_or_default();
        Ok(Self {
            holder: std::sync::Mutex::new(Some(holder)),
            pid,
            pid_ns,
            workdir: workdir.to_path_buf(),
            etc,
        })
    }

    /// The sandbox's private directory (same path inside and outside, different files).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The pid (on this machine) of the sandbox's first process (its pid 1).
    pub fn holder_pid(&self) -> u32 {
        self.pid
    }

    /// Kills everything in the sandbox and waits (bounded) until it is gone.
    pub async fn destroy(&self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + DESTROY_TIMEOUT;
        while self.is_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let holder = self.holder.lock().ok().and_then(|mut h| h.take());
        if let Some(mut holder) = holder {
            let _ = tokio::time::timeout(DESTROY_TIMEOUT, holder.wait()).await;
        }
    }

    /// Kills the sandbox's pid 1: the kernel then kills every process in its PID
    /// namespace, the ones entered with `nsenter` and detached ones alike.
    fn kill(&self) {
        if self.is_alive() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(mut holder) = self.holder.lock() {
            if let Some(holder) = holder.as_mut() {
                let _ = holder.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.etc);
    }

    /// The sandbox's pid 1 still lives and is still ours (not a recycled pid).
    fn is_alive(&self) -> bool {
        ns_of(self.pid, "pid").is_some_and(|ns| ns == self.pid_ns) && !is_zombie(self.pid)
    }

    fn check_alive(&self) -> Result<(), RunnerError> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(RunnerError::SandboxGone(format!(
                "the sandbox's first process {} has exited",
                self.pid
            )))
        }
    }

    /// `nsenter` into the sandbox, in a process group of its own: `nsenter` forks into
    /// the PID namespace and forwards no signal, so signals go to the group.
    fn enter(&self, script: &str, cwd: Option<&Path>, env: Vec<(String, String)>) -> Command {
        let pid = self.pid.to_string();
        let prefix: Vec<&str> = ["nsenter", "-t", &pid]
            .into_iter()
            .chain(NSENTER)
            .chain(SETPRIV)
            .collect();
        let mut command = sh_command(&prefix, with_cwd(script, cwd));
        command.env("PATH", SANDBOX_PATH).envs(env).process_group(0);
        command
    }
}

impl Runner for BwrapSandbox {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            self.check_alive()?;
            let command = self.enter(&exec.script, exec.cwd.as_deref(), exec.env);
            exec::run(command, exec.stdin, exec.timeout).await
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            self.check_alive()?;
            let command = self.enter(&spawn.script, spawn.cwd.as_deref(), spawn.env);
            exec::open_grouped_stream(command)
        })
    }

    // `spawn` stays the default (a stream whose output we copy): an agent that held our
    // terminal could push keystrokes into the host's shell with TIOCSTI.

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: true,
            shared_fs: false,
            upload: false,
        }
    }
}

impl Drop for BwrapSandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// bubblewrap's options: the namespaces, the private root, and the mounts in it.
fn bwrap_args(workdir: &Path, etc: &Path, mounts: &Mounts) -> Result<Vec<String>, RunnerError> {
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--info-fd",
        "1",
        "--hostname",
        "sandbox",
    ]
    .map(String::from)
    .to_vec();
    args.extend(system_args());
    args.extend(etc_args(etc));
    args.extend(dev_args());
    args.extend(strings(["--perms", "0700", "--tmpfs", &lossy(workdir)]));
    args.extend(mount_args(mounts)?);
    args.extend(strings(["--chdir", &lossy(workdir)]));
    Ok(args)
}

/// A read-only `/usr`, and `/bin`, `/lib*`, `/sbin` as the host has them.
fn system_args() -> Vec<String> {
    let mut args = strings(["--ro-bind", "/usr", "/usr"]).to_vec();
    for dir in SYSTEM_DIRS {
        let host = Path::new("/").join(dir);
        match std::fs::read_link(&host) {
            Ok(target) => args.extend(strings(["--symlink", &lossy(&target), &lossy(&host)])),
            Err(_) if host.is_dir() => {
                args.extend(strings(["--ro-bind", &lossy(&host), &lossy(&host)]))
            }
            Err(_) => {}
        }
    }
    args
}

/// The harmless host `/etc` entries, and our own `passwd`, `group` and `hosts` from `etc`.
fn etc_args(etc: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for name in ETC_PASSTHROUGH {
        let host = format!("/etc/{name}");
        args.extend(strings(["--ro-bind-try", &host, &host]));
    }
    for name in ETC_OWN {
        let ours = lossy(etc.join(name));
        args.extend(strings(["--ro-bind", &ours, &format!("/etc/{name}")]));
    }
    args
}

/// A fresh `/proc`, private `/tmp` and `/dev/shm`, and the few devices of [`DEVICES`].
fn dev_args() -> Vec<String> {
    let mut args = strings(["--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]).to_vec();
    for dev in DEVICES {
        args.extend(strings(["--dev-bind", dev, dev]));
    }
    for (link, to) in DEV_LINKS {
        args.extend(strings(["--symlink", to, link]));
    }
    args
}

/// The host paths the user chose, at the same paths inside.
fn mount_args(mounts: &Mounts) -> Result<Vec<String>, RunnerError> {
    let mut args = Vec::new();
    for (flag, paths) in [
        ("--ro-bind", &mounts.read_only),
        ("--bind", &mounts.writable),
    ] {
        for path in paths {
            let path = absolute(path)?;
            args.extend(strings([flag, &path, &path]));
        }
    }
    Ok(args)
}

/// The `/etc` files written for the sandbox rather than shown from the host.
const ETC_OWN: [&str; 3] = ["passwd", "group", "hosts"];

/// Writes the sandbox's own `/etc/passwd`, `group` and `hosts` (no host accounts) into a
/// fresh private host directory; returns it.
fn write_etc(workdir: &Path) -> Result<PathBuf, RunnerError> {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::metadata("/proc/self")?;
    let (uid, gid) = (me.uid(), me.gid());
    let home = lossy(workdir);
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let mut group = String::from("root:x:0:\n");
    if uid != 0 {
        passwd.push_str(&format!("agent:x:{uid}:{gid}:agent:{home}:/bin/sh\n"));
        group.push_str(&format!("agent:x:{gid}:\n"));
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    let hosts = "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n";
    let dir = private_temp_dir("paperclip-bridge-etc")?;
    for (file, text) in [
        ("passwd", passwd.as_str()),
        ("group", &group),
        ("hosts", hosts),
    ] {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(dir)
}

/// Waits for the holder to be ready; returns the sandbox's pid 1 (host pid), or what
/// bubblewrap said on stderr if it failed.
async fn started(holder: &mut Child) -> Result<u32, String> {
    let pid = child_pid(holder).await;
    let mut said = String::new();
    if let Some(stderr) = holder.stderr.take() {
        let mut lines = tokio::io::BufReader::new(stderr.take(MAX_INFO)).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "ready" {
                return pid.ok_or_else(|| "no child pid in the --info-fd report".into());
            }
            said.push_str(&line);
            said.push('\n');
        }
    }
    Err(said.trim().to_owned())
}

/// Reads bubblewrap's `--info-fd` report and returns the sandbox's pid 1 (host pid).
async fn child_pid(holder: &mut Child) -> Option<u32> {
    let stdout = holder.stdout.take()?;
    let mut text = Vec::new();
    let mut report = stdout.take(MAX_INFO);
    let mut chunk = [0u8; 1024];
    loop {
        let n = report.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        text.extend_from_slice(&chunk[..n]);
        if let Ok(info) = serde_json::from_slice::<serde_json::Value>(&text) {
            return info.get("child-pid")?.as_u64()?.try_into().ok();
        }
    }
}

fn missing_bwrap(e: &std::io::Error, program: &Path, etc: &Path) -> RunnerError {
    let _ = std::fs::remove_dir_all(etc);
    let program = program.display();
    if e.kind() == std::io::ErrorKind::NotFound {
        RunnerError::SandboxGone(format!(
            "bubblewrap (`{program}`) is not installed; the local sandbox needs it \
             (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
        ))
    } else {
        RunnerError::SandboxGone(format!("starting bubblewrap (`{program}`): {e}"))
    }
}

fn ns_of(pid: u32, ns: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// A new directory only we can enter, under the system temp dir.
fn private_temp_dir(prefix: &str) -> Result<PathBuf, RunnerError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("{prefix}-{name}"));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn absolute(path: &Path) -> Result<String, RunnerError> {
    let path = std::path::absolute(path)?;
    if !path.exists() {
        return Err(RunnerError::SandboxGone(format!(
            "cannot bind {} into the sandbox: it does not exist",
            path.display()
        )));
    }
    Ok(lossy(&path))
}

fn lossy(path: impl AsRef<Path>) -> String {
    path.as_ref().to_string_lossy().into_owned()
}

fn strings<const N: usize>(items: [&str; N]) -> [String; N] {
    items.map(String::from)
}
