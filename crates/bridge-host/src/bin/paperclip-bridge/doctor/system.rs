//! The doctor's checks of this machine: the programs the sandbox needs, and whether it
//! may make user namespaces.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bridge_host::runner::bwrap::{self, SANDBOX_PATH};
use bridge_host::runner::{exec_path, find_program, CommandRunner, Tool, ToolSide};

use super::Outcome;
use crate::args::{SandboxArgs, SandboxKind};

/// How long the trial sandbox may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The programs the chosen sandbox starts on this machine (and, for bwrap and local, in
/// the sandbox), each looked up as the runner looks it up.
pub fn tools(args: &SandboxArgs) -> Outcome {
    let scripts = bridge_host::deploy::SCRIPT_TOOLS;
    let tools = match args.sandbox {
        SandboxKind::Bwrap => bwrap::tools(&args.bwrap, &scripts),
        SandboxKind::Local => std::iter::once("sh")
            .chain(scripts)
            .map(host_tool)
            .collect(),
        SandboxKind::Exec => match exec_program(args.exec.as_deref()) {
            Ok(program) => vec![Tool {
                // The prefix keeps this process's environment, PATH included.
                found: find_program(&program, &std::env::var("PATH").unwrap_or_default()),
                name: program,
                side: ToolSide::Host,
            }],
            Err(why) => return Outcome::fail(why, "pass --exec PREFIX, e.g. 'ssh -T HOST'"),
        },
        SandboxKind::E2b => return Outcome::Skip("E2B needs no program here (HTTP)".into()),
    };
    judge(&tools, args)
}

fn host_tool(name: &str) -> Tool {
    Tool {
        name: name.to_owned(),
        side: ToolSide::Host,
        found: find_program(name, &exec_path()),
    }
}

/// The program an `--exec` prefix starts, split as the runner splits it.
fn exec_program(prefix: Option<&str>) -> Result<String, String> {
    let prefix = prefix.ok_or("--sandbox exec without --exec")?;
    CommandRunner::parse(prefix)
        .map(|runner| runner.program().to_owned())
        .map_err(|e| format!("--exec {prefix:?}: {e}"))
}

fn judge(tools: &[Tool], args: &SandboxArgs) -> Outcome {
    let missing: Vec<&Tool> = tools.iter().filter(|t| t.found.is_none()).collect();
    if missing.is_empty() {
        return Outcome::Ok(found_text(tools, args.sandbox));
    }
    let names: Vec<String> = missing.iter().map(|t| describe(t)).collect();
    let packages: BTreeSet<&str> = missing.iter().map(|t| debian_package(&t.name)).collect();
    let mut fix = format!(
        "install them (Debian/Ubuntu): apt-get install {}",
        packages.into_iter().collect::<Vec<_>>().join(" ")
    );
    if missing.iter().any(|t| t.name.contains('/')) {
        fix.push_str("; or pass --bwrap with the path of an installed bwrap");
    }
    if args.sandbox == SandboxKind::Exec {
        fix = "install the program your --exec prefix starts, or correct --exec".into();
    }
    Outcome::fail(format!("missing: {}", names.join(", ")), fix)
}

fn describe(tool: &Tool) -> String {
    match tool.side {
        ToolSide::Host => tool.name.clone(),
        ToolSide::Sandbox => format!("{} (in the sandbox's /usr)", tool.name),
    }
}

fn found_text(tools: &[Tool], kind: SandboxKind) -> String {
    let host: Vec<String> = tools
        .iter()
        .filter(|t| t.side == ToolSide::Host)
        .filter_map(|t| t.found.as_ref().map(|p| p.display().to_string()))
        .collect();
    let inside = tools.iter().filter(|t| t.side == ToolSide::Sandbox).count();
    let mut text = host.join(", ");
    if inside > 0 {
        text.push_str(&format!("; {inside} programs in the sandbox's /usr"));
    }
    if kind == SandboxKind::Exec {
        text.push_str(" (the sandbox's own programs: see the end-to-end check)");
    }
    text
}

/// The Debian package a program comes from.
fn debian_package(name: &str) -> &'static str {
    let base = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base.as_str() {
        "bwrap" => "bubblewrap",
        "nsenter" | "setpriv" | "setsid" => "util-linux",
        "kill" => "procps",
        "sh" => "dash",
        "sed" => "sed",
        "grep" => "grep",
        "ssh" => "openssh-client",
        "podman" => "podman",
        "docker" => "docker.io",
        _ => "coreutils",
    }
}

/// The kernel settings that govern unprivileged user namespaces (those that exist here).
struct Sysctls {
    /// Debian's and Ubuntu's switch (`kernel.unprivileged_userns_clone`).
    clone: Option<u64>,
    /// `user.max_user_namespaces`.
    max: Option<u64>,
    /// Ubuntu 24.04's AppArmor restriction (`kernel.apparmor_restrict_unprivileged_userns`).
    apparmor: Option<u64>,
}

impl Sysctls {
    fn read() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        Self {
            clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            max: read("/proc/sys/user/max_user_namespaces"),
            apparmor: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        }
    }

    /// The settings that forbid this user a user namespace, each with its fix.
    fn blocking(&self, root: bool) -> Vec<(String, &'static str)> {
        let mut found = Vec::new();
        if self.max == Some(0) {
            found.push((
                "user.max_user_namespaces = 0".into(),
                "sysctl -w user.max_user_namespaces=15000",
            ));
        }
        if self.clone == Some(0) && !root {
            found.push((
                "kernel.unprivileged_userns_clone = 0".into(),
                "sysctl -w kernel.unprivileged_userns_clone=1",
            ));
        }
        found
    }

    fn text(&self) -> String {
        let show = |name: &str, v: Option<u64>| v.map(|v| format!("{name} = {v}"));
        [
            show("user.max_user_namespaces", self.max),
            show("kernel.unprivileged_userns_clone", self.clone),
            show(
                "kernel.apparmor_restrict_unprivileged_userns",
                self.apparmor,
            ),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Whether bubblewrap may make its namespaces here: the kernel's settings, then a real
/// `bwrap --unshare-all ... true`.
pub async fn user_namespaces(args: &SandboxArgs, tools_failed: bool) -> Outcome {
    if args.sandbox != SandboxKind::Bwrap {
        return Outcome::Skip(format!(
            "--sandbox {} makes no namespaces on this machine",
            kind_name(args.sandbox)
        ));
    }
    let root = is_root();
    let sysctls = Sysctls::read();
    let blocking = sysctls.blocking(root);
    if !blocking.is_empty() {
        let (what, fixes): (Vec<String>, Vec<&str>) = blocking.into_iter().unzip();
        return Outcome::fail(
            format!("unprivileged user namespaces are off: {}", what.join(", ")),
            format!(
                "{} (as root; to keep it, a file in /etc/sysctl.d/)",
                fixes.join("; ")
            ),
        );
    }
    if tools_failed {
        return Outcome::Skip(format!(
            "{}; not tried: needs the tools above",
            sysctls.text()
        ));
    }
    match trial(&args.bwrap).await {
        Ok(()) => Outcome::Ok(format!(
            "{}; bwrap --unshare-all ran `true`",
            sysctls.text()
        )),
        Err(why) => Outcome::fail(
            format!("bwrap --unshare-all failed: {why}"),
            trial_fix(&sysctls, root),
        ),
    }
}

fn trial_fix(sysctls: &Sysctls, root: bool) -> String {
    if sysctls.apparmor == Some(1) && !root {
        return "AppArmor forbids unprivileged user namespaces: sysctl -w \
                kernel.apparmor_restrict_unprivileged_userns=0, or give bwrap an AppArmor \
                profile that allows them"
            .into();
    }
    "allow user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 and sysctl -w \
     user.max_user_namespaces=15000; in a container, run it with user namespaces and mounts \
     allowed (e.g. docker run --security-opt seccomp=unconfined --security-opt \
     apparmor=unconfined)"
        .into()
}

/// `bwrap --unshare-all` with a read-only root and a fresh /proc, running `true`.
async fn trial(program: &Path) -> Result<(), String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/"])
        .args(["--proc", "/proc", "--", "true"])
        .env_clear()
        .env("PATH", SANDBOX_PATH)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TRIAL_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("no answer within {} s", TRIAL_TIMEOUT.as_secs()))?
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{} ({})", stderr.trim(), output.status))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub fn kind_name(kind: SandboxKind) -> &'static str {
    match kind {
        SandboxKind::Bwrap => "bwrap",
        SandboxKind::Local => "local",
        SandboxKind::Exec => "exec",
        SandboxKind::E2b => "e2b",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debian_switch_binds_ordinary_users_and_the_maximum_binds_everyone() {
        let off = Sysctls {
            clone: Some(0),
            max: Some(0),
            apparmor: None,
        };
        let names = |root| -> Vec<String> {
            off.blocking(root)
                .into_iter()
                .map(|(what, _)| what)
                .collect()
        };
        assert_eq!(names(true), ["user.max_user_namespaces = 0"]);
        assert_eq!(
            names(false),
            [
                "user.max_user_namespaces = 0",
                "kernel.unprivileged_userns_clone = 0"
            ]
        );
        let on = Sysctls {
            clone: Some(1),
            max: Some(100),
            apparmor: Some(0),
        };
        assert!(on.blocking(false).is_empty());
    }

    #[test]
    fn each_program_names_its_debian_package() {
        assert_eq!(debian_package("/opt/x/bwrap"), "bubblewrap");
        assert_eq!(debian_package("setpriv"), "util-linux");
        assert_eq!(debian_package("sha256sum"), "coreutils");
    }
}
