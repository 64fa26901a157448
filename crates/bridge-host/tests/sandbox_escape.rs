//! The default local sandbox as an attacker inside it sees it: the real key, the audit log,
//! host files, host sockets (path and abstract) and host processes are out of reach, and
//! no capability is left. Runs the real `paperclip-bridge run`; prints everything on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

/// What the agent tries; `@NAME@` placeholders are filled in by the test.
const ATTACK: &str = r#"
echo "--- key file"; cat '@KEY@' 2>&1
[ -e '@KEY@' ] && echo "key-file=visible" || echo "key-file=hidden"
[ -e '@AUDIT@' ] && echo "audit-log=visible" || echo "audit-log=hidden"
[ -e '@SOCK@' ] && echo "host-socket=visible" || echo "host-socket=hidden"
[ -e '@HOSTDIR@' ] && echo "host-dir=visible" || echo "host-dir=hidden"
ls -a /root /home 2>&1
kill -0 @HOSTPID@ 2>/dev/null && echo "host-process=signalled" || echo "host-process=unreachable"
node -e 'const s = require("net").connect({ path: "\0@ABSTRACT@" });
  s.on("connect", () => { console.log("abstract-socket=connected"); process.exit(0); });
  s.on("error", (e) => { console.log("abstract-socket=" + e.code); process.exit(0); });'
grep '^CapEff' /proc/self/status
echo "processes=$(ls /proc | grep -c '^[0-9]')"
echo "--- environment and argv of every visible process"
env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' '\n'
echo "--- every small file outside /usr, /proc and /dev"
[ @SCAN@ = 1 ] && find / -xdev -path /usr -prune -o -path /proc -prune -o -path /dev -prune -o -type f -size -512k -print 2>/dev/null | while read -r f; do cat "$f" 2>/dev/null; done
echo "--- done"
"#;

/// The attack's outcome: the agent's stdout, a report for failures, and what the host saw.
struct Outcome {
    stdout: String,
    report: String,
    key: String,
    path_hits: Arc<AtomicUsize>,
    abstract_hits: Arc<AtomicUsize>,
    victim_alive: bool,
}

/// Runs [`ATTACK`] as the agent of `paperclip-bridge run --sandbox <sandbox>`, with a real
/// key file, an audit log, a host socket of each kind and a host process to signal.
async fn attack(sandbox: &str) -> Outcome {
    let recorder = Recorder::start().await;
    // Host files live under the build's own directory: not /tmp, which is private anyway.
    let host = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let key = format!("real-key-{}", bridge_host::deploy::new_token());
    let key_file = host.path().join("api-key");
    std::fs::write(&key_file, &key).unwrap();
    let audit = host.path().join("audit.log");
    let (sock, path_hits) = listen(host.path().join("host.sock"));
    let abstract_name = format!("paperclip-bridge-test-{}-{sandbox}", std::process::id());
    let abstract_hits = listen_abstract(&abstract_name);
    let mut victim = Command::new("sleep").arg("100").spawn().unwrap();
    let script = ATTACK
        .replace("@KEY@", &key_file.to_string_lossy())
        .replace("@AUDIT@", &audit.to_string_lossy())
        .replace("@SOCK@", &sock.to_string_lossy())
        .replace("@HOSTDIR@", &host.path().to_string_lossy())
        .replace("@HOSTPID@", &victim.id().to_string())
        .replace("@ABSTRACT@", &abstract_name)
        // Reading every file is for the sandbox's small tree, not the host's.
        .replace("@SCAN@", if sandbox == "local" { "0" } else { "1" });
    let mut command = Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .args(["run", "--sandbox", sandbox, "--api-url", &recorder.url])
        .arg("--api-key-file")
        .arg(&key_file)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = format!(
        "status {:?}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        stdout.contains("--- done"),
        "the attack did not run to its end:\n{report}"
    );
    let victim_alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    Outcome {
        stdout,
        report,
        key,
        path_hits,
        abstract_hits,
        victim_alive,
    }
}

#[tokio::test]
async fn nothing_of_the_host_is_reachable_from_the_default_sandbox() {
    let o = attack("bwrap").await;
    let report = &o.report;
    assert!(
        !o.stdout.contains(&o.key),
        "the real key crossed into the sandbox:\n{report}"
    );
    for seen in [
        "key-file=hidden",
        "audit-log=hidden",
        "host-socket=hidden",
        "host-dir=hidden",
        "host-process=unreachable",
        "abstract-socket=ECONNREFUSED",
        "CapEff:\t0000000000000000",
    ] {
        assert!(o.stdout.contains(seen), "expected {seen:?}:\n{report}");
    }
    let processes = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("processes="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap();
    assert!(
        processes < 20,
        "the sandbox sees {processes} processes:\n{report}"
    );
    assert_eq!(o.path_hits.load(Ordering::SeqCst), 0, "{report}");
    assert_eq!(o.abstract_hits.load(Ordering::SeqCst), 0, "{report}");
    assert!(o.victim_alive, "the host process died:\n{report}");
}

#[tokio::test]
async fn the_same_attack_without_a_sandbox_sees_everything() {
    // The control: the probes are real, so the test above can fail.
    let o = attack("local").await;
    let report = &o.report;
    assert!(o.stdout.contains(&o.key), "{report}");
    for seen in [
        "key-file=visible",
        "audit-log=visible",
        "host-socket=visible",
        "host-process=signalled",
        "abstract-socket=connected",
    ] {
        assert!(o.stdout.contains(seen), "expected {seen:?}:\n{report}");
    }
}

/// A Unix socket at `path` on the host; counts connections.
fn listen(path: std::path::PathBuf) -> (std::path::PathBuf, Arc<AtomicUsize>) {
    let listener = UnixListener::bind(&path).unwrap();
    (path, count_connections(listener))
}

/// An abstract Unix socket (no file; scoped by network namespace) on the host.
fn listen_abstract(name: &str) -> Arc<AtomicUsize> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    count_connections(UnixListener::bind_addr(&addr).unwrap())
}

fn count_connections(listener: UnixListener) -> Arc<AtomicUsize> {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = (&stream).read(&mut [0u8; 1]);
        }
    });
    hits
}
