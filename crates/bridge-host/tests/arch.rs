//! A sandbox that says it is aarch64 (a `uname` on its PATH that prints so) gets the
//! aarch64 gateway from a dist directory holding both builds; one without an aarch64
//! build is told how to make one, after one exec and with nothing uploaded.
//!
//! The real aarch64 gateway then serves a call through qemu-user: the start exec runs
//! the installed binary through `qemu-aarch64-static`, as a kernel with binfmt_misc for
//! aarch64 would. It needs the aarch64 build (`cargo xtask dist`, or
//! `PAPERCLIP_BRIDGE_SERVER_AARCH64_BIN`) and qemu-user (Debian's qemu-user-static); without
//! them the test says it is skipped, and fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bridge_host::deploy::{Arch, Bridge, BridgeConfig, DeployError, GatewayBinaries};
use bridge_host::runner::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, LocalRunner, Runner, RunnerError, Spawn,
};
use bridge_host::transport::TransportKind;
use common::*;

const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The local runner, in a sandbox whose `uname` prints `aarch64`, optionally starting the
/// gateway through qemu-user (only the start exec carries the bridge token).
#[derive(Debug)]
struct Aarch64Sandbox {
    shims: tempfile::TempDir,
    qemu: Option<PathBuf>,
    execs: AtomicU64,
    streams: AtomicU64,
}

impl Aarch64Sandbox {
    fn new(qemu: Option<PathBuf>) -> Arc<Self> {
        let shims = tempfile::tempdir().unwrap();
        write_script(&shims.path().join("uname"), "echo aarch64\n");
        write_script(
            &shims.path().join("emulated-gateway"),
            "exec \"$QEMU_AARCH64\" \"$REAL_BIN\" \"$@\"\n",
        );
        Arc::new(Self {
            shims,
            qemu,
            execs: AtomicU64::new(0),
            streams: AtomicU64::new(0),
        })
    }

    fn path(&self) -> String {
        format!("{}:{PATH}", self.shims.path().display())
    }

    fn adjust(&self, mut exec: Exec) -> Exec {
        let start = exec.env.iter().any(|(k, _)| k == "PAPERCLIP_BRIDGE_TOKEN");
        if let (true, Some(qemu)) = (start, &self.qemu) {
            let bin = exec.env.iter_mut().find(|(k, _)| k == "BIN").unwrap();
            let real = std::mem::replace(
                &mut bin.1,
                self.shims
                    .path()
                    .join("emulated-gateway")
                    .display()
                    .to_string(),
            );
            exec = exec
                .env("REAL_BIN", real)
                .env("QEMU_AARCH64", qemu.display().to_string());
        }
        exec.env("PATH", self.path())
    }
}

impl Runner for Aarch64Sandbox {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        self.execs.fetch_add(1, Ordering::SeqCst);
        let exec = self.adjust(exec);
        Box::pin(async move { LocalRunner.exec(exec).await })
    }

    fn stream(&self, mut spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        spawn.env.push(("PATH".into(), self.path()));
        Box::pin(async move { LocalRunner.stream(spawn).await })
    }

    fn capabilities(&self) -> Capabilities {
        LocalRunner.capabilities()
    }
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A dist directory (`<musl target>/paperclip-bridge-server`) with copies of these.
fn dist_dir(root: &Path, binaries: &[(Arch, &Path)]) -> PathBuf {
    let dist = root.join("dist");
    for (arch, binary) in binaries {
        let dir = dist.join(arch.musl_target());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(binary, dir.join("paperclip-bridge-server")).unwrap();
    }
    dist
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The aarch64 gateway and qemu-user, or why they are not here (a failure under CI).
fn aarch64_tools() -> Option<(PathBuf, PathBuf)> {
    let binary = std::env::var_os("PAPERCLIP_BRIDGE_SERVER_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/dist/aarch64-unknown-linux-musl/paperclip-bridge-server")
        });
    let qemu = std::env::var_os("PAPERCLIP_BRIDGE_QEMU_AARCH64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-aarch64-static"));
    let missing = match (binary.is_file(), qemu.is_file()) {
        (true, true) => return Some((binary, qemu)),
        (false, _) => format!(
            "no aarch64 gateway at {} (build it: cargo xtask dist --target aarch64-unknown-linux-musl)",
            binary.display()
        ),
        (true, false) => format!(
            "no qemu-user at {} (Debian: apt-get install qemu-user-static)",
            qemu.display()
        ),
    };
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(!ci, "CI must run this test: {missing}");
    eprintln!("SKIPPED: {missing}");
    None
}

#[tokio::test]
async fn an_aarch64_sandbox_gets_the_aarch64_gateway_and_calls_go_through_it() {
    let Some((aarch64, qemu)) = aarch64_tools() else {
        return;
    };
    let (recorder, dir) = recorder_and_dir().await;
    let x86_64 = gateway_bin();
    let dist = dist_dir(
        dir.path(),
        &[(Arch::X86_64, &x86_64), (Arch::Aarch64, &aarch64)],
    );
    let sandbox_dir = dir.path().join("sandbox");
    std::fs::create_dir_all(&sandbox_dir).unwrap();
    let upstream = upstream_to(&recorder.url, Duration::from_secs(10));
    let binaries = GatewayBinaries::from_dist_dir(&dist);
    assert_eq!(binaries.arches(), vec![Arch::X86_64, Arch::Aarch64]);
    let mut config = BridgeConfig::new(binaries, sandbox_dir.clone(), upstream);
    // The stream transport runs the gateway binary's `session`: keep to sh + coreutils.
    config.transport = TransportKind::Posix;
    config.worker.drain_timeout = Duration::from_millis(300);
    config.stop_grace = Duration::from_secs(5);
    // qemu-user starts slower than the native binary.
    config.ready_timeout = Duration::from_secs(30);
    let runner = Aarch64Sandbox::new(Some(qemu));
    let bridge = Bridge::start(runner.clone(), config).await.unwrap();
    let installed = BridgeConfig::remote_binary_in(&sandbox_dir);
    assert_eq!(
        sha256_of(&installed),
        sha256_of(&aarch64),
        "the aarch64 build"
    );
    assert_ne!(sha256_of(&aarch64), sha256_of(&x86_64));
    let script = "curl -sS -w ' %{http_code}' -H \"Authorization: Bearer $PAPERCLIP_API_KEY\" \"$PAPERCLIP_API_URL/api/agents/me\"";
    let mut exec = Exec::new(script, Duration::from_secs(30));
    exec.env = bridge.agent_env();
    let out = LocalRunner.exec(exec).await.unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(bridge.queue_dir().join("logs/bridge.log"));
    assert!(
        answer.ends_with(" 200"),
        "{answer}; stderr: {}; gateway log: {log:?}",
        out.stderr_text()
    );
    assert_eq!(recorder.count("GET", "/api/agents/me"), 1);
    bridge.stop().await.unwrap();
}

#[tokio::test]
async fn an_aarch64_sandbox_without_an_aarch64_build_is_told_how_to_make_one() {
    let (recorder, dir) = recorder_and_dir().await;
    let dist = dist_dir(dir.path(), &[(Arch::X86_64, &gateway_bin())]);
    let sandbox_dir = dir.path().join("sandbox");
    std::fs::create_dir_all(&sandbox_dir).unwrap();
    let upstream = upstream_to(&recorder.url, Duration::from_secs(10));
    let config = BridgeConfig::new(
        GatewayBinaries::from_dist_dir(&dist),
        sandbox_dir.clone(),
        upstream,
    );
    let runner = Aarch64Sandbox::new(None);
    let err = Bridge::start(runner.clone(), config).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, DeployError::NoBinaryForArch { arch: Arch::Aarch64, have } if have == &[Arch::X86_64]),
        "{err:?}"
    );
    assert!(
        text.contains("cargo xtask dist --target aarch64-unknown-linux-musl"),
        "{text}"
    );
    assert_eq!(runner.execs.load(Ordering::SeqCst), 0, "no exec");
    assert_eq!(
        runner.streams.load(Ordering::SeqCst),
        1,
        "only the one-exec start, which asked for the binary"
    );
    assert!(!BridgeConfig::remote_binary_in(&sandbox_dir).exists());
}

#[tokio::test]
async fn an_x86_64_binary_is_not_sent_to_an_aarch64_sandbox() {
    let (recorder, dir) = recorder_and_dir().await;
    let sandbox_dir = dir.path().join("sandbox");
    std::fs::create_dir_all(&sandbox_dir).unwrap();
    let upstream = upstream_to(&recorder.url, Duration::from_secs(10));
    // One binary given for every sandbox: its ELF header says x86_64.
    let config = BridgeConfig::new(gateway_bin(), sandbox_dir.clone(), upstream);
    let err = Bridge::start(Aarch64Sandbox::new(None), config)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeployError::WrongArch { binary: Arch::X86_64, machine, .. } if machine == "aarch64"),
        "{err:?}"
    );
    assert!(!BridgeConfig::remote_binary_in(&sandbox_dir).exists());
}
