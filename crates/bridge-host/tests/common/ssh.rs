//! A real OpenSSH server in a namespace sandbox, reached the way users reach theirs:
//! `ssh -F CONFIG -T sandbox`, key auth with a fresh key, the host key pinned.
//!
//! The sandbox is a bubblewrap holder (new user, mount, network, PID, IPC and UTS
//! namespaces) whose user is `agent`, uid 1000, whoever runs the tests. Not the project's
//! `BwrapSandbox`: there the agent keeps the host's uid, and as root sshd insists on its
//! privilege separation (the `sshd` user, `/run/sshd`, a chroot and a setuid to a uid
//! the one-uid user namespace does not map), whereas an unprivileged sshd serves its own
//! user without any of that. Each connection's `ProxyCommand` enters the holder with
//! `nsenter` and runs `sshd -i` (inetd mode: the protocol on stdin/stdout), so the
//! sandbox has no listening socket and the host's loopback stays out of it. Nothing
//! under `~/.ssh` is read or written: every file is in a temporary directory, named by
//! the `-F` config.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bridge_host::runner::CommandRunner;

/// The sandbox user's home, private to the sandbox (a tmpfs): deployments go below it.
pub const HOME: &str = "/home/agent";

/// The host name the config gives the sandbox (and its pinned key).
const HOST: &str = "sandbox";

/// A running sandbox with sshd reachable through [`SshSandbox::prefix`]. Dropping it
/// kills everything inside.
pub struct SshSandbox {
    holder: Child,
    pid: u32,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl SshSandbox {
    /// Generates the keys and configs, and starts the sandbox. Panics, naming the
    /// Debian package, when a tool is missing: the SSH tests never skip.
    pub fn start() -> SshSandbox {
        let tools = Tools::find();
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path();
        keygen(&tools.keygen, &at.join("host_key"));
        keygen(&tools.keygen, &at.join("client_key"));
        std::fs::copy(at.join("client_key.pub"), at.join("authorized_keys")).unwrap();
        let host_key = std::fs::read_to_string(at.join("host_key.pub")).unwrap();
        std::fs::write(at.join("known_hosts"), format!("{HOST} {host_key}")).unwrap();
        std::fs::write(at.join("sshd_config"), sshd_config(at)).unwrap();
        std::fs::write(at.join("passwd"), PASSWD).unwrap();
        std::fs::write(at.join("group"), GROUP).unwrap();
        let (holder, pid) = start_holder(at);
        let config = at.join("ssh_config");
        std::fs::write(&config, ssh_config(at, &tools, pid)).unwrap();
        SshSandbox {
            holder,
            pid,
            config,
            _dir: dir,
        }
    }

    /// `ssh -F CONFIG -T sandbox`: the exec prefix, as a user would write it.
    pub fn prefix(&self) -> Vec<String> {
        let config = self.config.to_string_lossy().into_owned();
        ["ssh", "-F", &config, "-T", HOST]
            .map(String::from)
            .to_vec()
    }

    /// [`SshSandbox::prefix`] as one string, for the CLI's `--exec`.
    pub fn prefix_text(&self) -> String {
        self.prefix().join(" ")
    }

    /// The library's runner over that prefix (it sees `ssh` and quotes for its shell).
    pub fn runner(&self) -> CommandRunner {
        CommandRunner::new(self.prefix()).unwrap()
    }
}

impl Drop for SshSandbox {
    fn drop(&mut self) {
        // The sandbox's pid 1: the kernel then kills its whole PID namespace.
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Absolute paths of the programs the sandbox needs.
struct Tools {
    keygen: PathBuf,
    sshd: PathBuf,
    nsenter: PathBuf,
    setpriv: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        // ssh itself runs as the prefix, by name: it must be on PATH too.
        tool("ssh", "openssh-client");
        tool("bwrap", "bubblewrap");
        Tools {
            keygen: tool("ssh-keygen", "openssh-client"),
            sshd: tool("sshd", "openssh-server"),
            nsenter: tool("nsenter", "util-linux"),
            setpriv: tool("setpriv", "util-linux"),
        }
    }
}

/// `name` on PATH or in the sbin directories an ordinary user's PATH may lack (sshd is
/// /usr/sbin/sshd); a missing one fails the test with the package to install.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]);
    for dir in dirs.filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the SSH tests need `{name}` and it is not installed \
         (Debian/Ubuntu: apt-get install {package}; .ci/run installs it)"
    );
}

fn keygen(keygen: &Path, path: &Path) {
    let out = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bridge-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// The sandbox's accounts: the one sshd serves, with a home that exists (sshd's "could
/// not chdir" would otherwise land on every exec's stderr).
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n";
const GROUP: &str = "root:x:0:\nagent:x:1000:\n";

/// sshd for one user, keys only. `UsePAM no`: PAM wants root; `StrictModes no`: the files
/// are the test user's, seen through the namespace's uid map.
fn sshd_config(at: &Path) -> String {
    let at = at.display();
    format!(
        "HostKey {at}/host_key
AuthorizedKeysFile {at}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers agent
PermitTTY no
AllowTcpForwarding no
X11Forwarding no
UseDNS no
PrintMotd no
PrintLastLog no
PidFile none
LogLevel ERROR
"
    )
}

/// The client's whole configuration: this key only, this host key only, no agent, no
/// prompts; the connection is `sshd -i` entered into the holder's namespaces.
/// `setpriv --no-new-privs` keeps setuid files inert for the session; sshd runs as the
/// sandbox's unprivileged user, so its exec already dropped the capabilities `nsenter`
/// gained.
fn ssh_config(at: &Path, tools: &Tools, pid: u32) -> String {
    let at_text = at.display();
    let (nsenter, setpriv, sshd) = (
        tools.nsenter.display(),
        tools.setpriv.display(),
        tools.sshd.display(),
    );
    format!(
        "Host {HOST}
  User agent
  HostKeyAlias {HOST}
  IdentityFile {at_text}/client_key
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile {at_text}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
  ControlPath none
  LogLevel ERROR
  ProxyCommand {nsenter} -t {pid} -U -m -n -p -i -u -r -w --preserve-credentials -- {setpriv} --no-new-privs {sshd} -i -e -f {at_text}/sshd_config
"
    )
}

/// bubblewrap's options: the namespaces, uid 1000, a read-only system, our accounts,
/// the key directory (read-only, same path) and a private home.
fn bwrap_args(at: &Path) -> Vec<String> {
    let at = at.to_string_lossy().into_owned();
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--hostname",
        HOST,
        "--info-fd",
        "1",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .map(String::from)
    .to_vec();
    for dir in ["/bin", "/sbin", "/lib", "/lib64", "/etc"] {
        args.extend(["--ro-bind-try", dir, dir].map(String::from));
    }
    for file in ["passwd", "group"] {
        args.extend([
            "--ro-bind".into(),
            format!("{at}/{file}"),
            format!("/etc/{file}"),
        ]);
    }
    args.extend(["--proc", "/proc", "--tmpfs", "/tmp"].map(String::from));
    for dev in ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"] {
        args.extend(["--dev-bind", dev, dev].map(String::from));
    }
    args.extend(["--ro-bind".into(), at.clone(), at]);
    args.extend(["--perms", "0700", "--tmpfs", HOME, "--chdir", HOME].map(String::from));
    args
}

/// Starts the holder (it lives while its stdin, our pipe, stays open); returns it and
/// the sandbox's pid 1 from bubblewrap's `--info-fd` report.
fn start_holder(at: &Path) -> (Child, u32) {
    let mut holder = Command::new("bwrap")
        .args(bwrap_args(at))
        .args(["--", "sh", "-c", "echo ready >&2; exec cat >/dev/null"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bwrap");
    let pid = info_pid(holder.stdout.take().unwrap());
    let mut said = String::new();
    let mut stderr = std::io::BufReader::new(holder.stderr.take().unwrap());
    stderr.read_line(&mut said).unwrap();
    assert_eq!(said, "ready\n", "the ssh sandbox did not start");
    (holder, pid.expect("no child-pid in bubblewrap's report"))
}

fn info_pid(stdout: std::process::ChildStdout) -> Option<u32> {
    // One JSON object, then nothing until the holder ends: read just that value.
    let reader = std::io::BufReader::new(stdout);
    let mut values = serde_json::Deserializer::from_reader(reader).into_iter();
    let info: serde_json::Value = values.next()?.ok()?;
    info.get("child-pid")?.as_u64()?.try_into().ok()
}
