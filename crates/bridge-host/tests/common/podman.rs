//! A real podman container, reached the way users reach theirs: `podman exec -i BOX`.
//!
//! No registry: the image is imported from a root file system made here (empty but for
//! the merged-/usr links, `/tmp` and a home), and the host's `/usr` is mounted into the
//! container read-only, so its `sh`, coreutils and curl run there. `--network none`.
//!
//! What this machine needs for podman, and so what [`PodmanBox`] sets up (a test machine
//! is a VM-like sandbox: no systemd, no cgroup delegation, no CAP_SYS_RESOURCE, no
//! /etc/subuid): podman runs as root of a user namespace of its own (`unshare -r`; the
//! host's uid outside, root or not), told it is already in its rootless namespace
//! (`_CONTAINERS_USERNS_CONFIGURED`), so it neither needs subordinate ids nor tries to
//! raise rlimits. That namespace's private mount namespace hides the cgroup v2 half of the
//! host's hybrid cgroup layout (crun refuses hybrid layouts, even with `--cgroups
//! disabled`) and has its own `/dev/shm` (podman's lock file). Storage (`vfs`), runtime
//! state and configuration live in a temporary directory. A `podman` script there runs
//! the real one that way: the exec prefix is `DIR/podman exec -i BOX`.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bridge_host::runner::CommandRunner;

/// The container user's home (in the container's own file system): deployments go below.
pub const HOME: &str = "/home/agent";

const BOX: &str = "bridge-test-box";
const IMAGE: &str = "localhost/bridge-test-rootfs:1";

/// A running container. Dropping it removes the container and its namespace holder.
pub struct PodmanBox {
    holder: Child,
    podman: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanBox {
    /// Builds the image and starts the container. Panics, naming the Debian package,
    /// when a tool is missing: the podman tests never skip.
    pub fn start() -> PodmanBox {
        let tools = [
            tool("podman", "podman"),
            tool("crun", "crun"),
            tool("unshare", "util-linux"),
            tool("nsenter", "util-linux"),
            tool("tar", "tar"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path();
        let holder = start_holder(&tools[2]);
        let podman = at.join("podman");
        std::fs::write(&podman, wrapper(at, &tools[3], &tools[0], holder.id())).unwrap();
        std::fs::set_permissions(&podman, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tarball = rootfs(at, &tools[4]);
        let made = PodmanBox {
            holder,
            podman,
            _dir: dir,
        };
        made.podman(&["import", &tarball, IMAGE]);
        made.podman(&[
            "run",
            "-d",
            "--name",
            BOX,
            "--network",
            "none",
            "--cgroups",
            "disabled",
            "--volume",
            "/usr:/usr:ro",
            "--workdir",
            HOME,
            IMAGE,
            "sleep",
            "infinity",
        ]);
        made
    }

    /// `DIR/podman exec -i BOX`: the exec prefix.
    pub fn prefix(&self) -> Vec<String> {
        let podman = self.podman.to_string_lossy().into_owned();
        [podman.as_str(), "exec", "-i", BOX]
            .map(String::from)
            .to_vec()
    }

    /// The library's runner over that prefix.
    pub fn runner(&self) -> CommandRunner {
        CommandRunner::new(self.prefix()).unwrap()
    }

    /// Runs podman with `args`; panics with its output if it fails.
    fn podman(&self, args: &[&str]) {
        let out = Command::new(&self.podman)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PodmanBox {
    fn drop(&mut self) {
        // The container's processes belong to conmon, not to the holder: remove them.
        let _ = Command::new(&self.podman)
            .args(["rm", "--force", "--time", "0", BOX])
            .stdin(Stdio::null())
            .output();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `name` on PATH or in the sbin directories; a missing one fails the test with the
/// package to install.
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
        "the podman tests need `{name}` and it is not installed \
         (Debian/Ubuntu: apt-get install {package}; .ci/run installs it)"
    );
}

/// The holder's mounts, then it lives while its stdin, our pipe, stays open.
const HOLDER: &str = "set -e
if [ -d /sys/fs/cgroup/unified ]; then mount -t tmpfs none /sys/fs/cgroup/unified; fi
mount -t tmpfs none /dev/shm
echo ready
exec cat >/dev/null";

/// Starts the user and mount namespaces podman runs in (the holder's pid is theirs:
/// `unshare` and `sh` exec in place).
fn start_holder(unshare: &Path) -> Child {
    let mut holder = Command::new(unshare)
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", HOLDER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting unshare");
    let mut said = String::new();
    let mut stdout = std::io::BufReader::new(holder.stdout.take().unwrap());
    stdout.read_line(&mut said).unwrap();
    assert_eq!(said, "ready\n", "the podman namespace did not start");
    holder
}

/// The `podman` script: the real one in the holder's namespaces, everything it keeps
/// in `at`.
fn wrapper(at: &Path, nsenter: &Path, podman: &Path, holder: u32) -> String {
    let (at, nsenter, podman) = (at.display(), nsenter.display(), podman.display());
    format!(
        "#!/bin/sh
export HOME={at}/home XDG_RUNTIME_DIR={at}/run XDG_CONFIG_HOME={at}/config XDG_DATA_HOME={at}/data
export _CONTAINERS_USERNS_CONFIGURED=done _CONTAINERS_ROOTLESS_UID=\"$(id -u)\"
mkdir -p \"$HOME\" \"$XDG_RUNTIME_DIR\" && chmod 700 \"$XDG_RUNTIME_DIR\"
exec {nsenter} -t {holder} -U -m --preserve-credentials {podman} \\
  --root {at}/storage --runroot {at}/runroot --storage-driver vfs \\
  --cgroup-manager cgroupfs --runtime crun --events-backend none \"$@\"
"
    )
}

/// A tarball of the image's root file system: the merged-/usr links (the host's `/usr`
/// is mounted over the empty `usr`), `/tmp` and the home; every file root's.
fn rootfs(at: &Path, tar: &Path) -> String {
    let root = at.join("rootfs");
    for dir in ["usr", "tmp", "etc", "home/agent"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for link in ["bin", "sbin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{link}"), root.join(link)).unwrap();
    }
    let tarball = at.join("rootfs.tar");
    let status = Command::new(tar)
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the root file system failed");
    tarball.to_string_lossy().into_owned()
}
