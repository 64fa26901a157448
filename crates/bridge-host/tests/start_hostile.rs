//! The one-exec start-up (`deploy/stream_start.rs`) fed hostile output: anything in the
//! sandbox may replace what our start script prints (a planted `uname`, a gateway binary
//! that prints garbage, a flood). The start must end with a clear, typed error, after a
//! bounded number of bytes read and a bounded number of attempts, and never serve.
//!
//! A runner wrapper replaces the start's script with a hostile one (or runs the real one
//! with a planted program) and counts the bytes the host reads from stdout and stderr and
//! writes to stdin. Each test names the bound it checks and fails without it. The
//! `tokio` time-out around each start is only a safety net: a hang fails clearly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bridge_host::deploy::{Arch, Bridge, BridgeConfig, DeployError, GatewayBinaries, RetryPolicy};
use bridge_host::runner::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, LocalRunner, Runner, RunnerError, Spawn,
};
use bridge_host::transport::TransportKind;
use common::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The start's line bound (`START_LINE_LIMIT` in `deploy/stream_start.rs`).
const LINE_LIMIT: u64 = 64 * 1024;
/// The start's stderr bound (`STDERR_LIMIT` there).
const STDERR_LIMIT: u64 = 4096;
/// What a reader may have buffered past a bound (tokio's `BufReader` holds 8 KiB).
const BUFFERED: u64 = 16 * 1024;
/// Attempts per start in these tests.
const ATTEMPTS: u32 = 2;
/// The step the one-exec start names in its errors.
const STEP: &str = "starting the gateway and its session";
/// Only a safety net: every start below ends by a bound of its own well before this.
const SAFETY_NET: Duration = Duration::from_secs(120);
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// Bytes that crossed the start's pipes, over all its streams.
#[derive(Debug, Default)]
struct Counts {
    stdout: AtomicU64,
    stderr: AtomicU64,
    stdin: AtomicU64,
}

/// The local runner with a hostile sandbox: the start's script is replaced (`Some`), or
/// the real one runs with `shims` first on its PATH.
#[derive(Debug)]
struct Hostile {
    script: Option<String>,
    shims: Option<tempfile::TempDir>,
    streams: AtomicU64,
    execs: AtomicU64,
    counts: Arc<Counts>,
}

impl Hostile {
    /// Whatever the start runs, `script` runs instead.
    fn replacing(script: &str) -> Arc<Self> {
        Self::new(Some(script.to_owned()), None)
    }

    /// The real start script, with these programs (name, body) first on its PATH.
    fn planting(programs: &[(&str, &str)]) -> Arc<Self> {
        let shims = tempfile::tempdir().unwrap();
        for (name, body) in programs {
            write_script(&shims.path().join(name), body);
        }
        Self::new(None, Some(shims))
    }

    fn new(script: Option<String>, shims: Option<tempfile::TempDir>) -> Arc<Self> {
        Arc::new(Self {
            script,
            shims,
            streams: AtomicU64::new(0),
            execs: AtomicU64::new(0),
            counts: Arc::default(),
        })
    }

    fn streams(&self) -> u64 {
        self.streams.load(Ordering::SeqCst)
    }
}

impl Runner for Hostile {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        self.execs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { LocalRunner.exec(exec).await })
    }

    fn stream(&self, mut spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        if let Some(script) = &self.script {
            spawn.script = script.clone();
        }
        if let Some(shims) = &self.shims {
            spawn
                .env
                .push(("PATH".into(), format!("{}:{PATH}", shims.path().display())));
        }
        Box::pin(async move {
            let stream = LocalRunner.stream(spawn).await?;
            let counts = &self.counts;
            Ok(ExecStream {
                stdin: Box::pin(Counted(stream.stdin, counts.clone(), Pipe::Stdin)),
                stdout: Box::pin(Counted(stream.stdout, counts.clone(), Pipe::Stdout)),
                stderr: Box::pin(Counted(stream.stderr, counts.clone(), Pipe::Stderr)),
                process: stream.process,
            })
        })
    }

    fn capabilities(&self) -> Capabilities {
        // Streaming, no file API: a missing binary goes on the start's stdin.
        LocalRunner.capabilities()
    }
}

#[derive(Clone, Copy)]
enum Pipe {
    Stdin,
    Stdout,
    Stderr,
}

/// A pipe that counts the bytes through it.
struct Counted<T>(Pin<Box<T>>, Arc<Counts>, Pipe)
where
    T: ?Sized;

impl<T: ?Sized> Counted<T> {
    fn add(&self, n: usize) {
        let counter = match self.2 {
            Pipe::Stdin => &self.1.stdin,
            Pipe::Stdout => &self.1.stdout,
            Pipe::Stderr => &self.1.stderr,
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
}

impl<T: AsyncRead + ?Sized> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = self.0.as_mut().poll_read(cx, buf);
        self.add(buf.filled().len() - before);
        poll
    }
}

impl<T: AsyncWrite + ?Sized> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = self.0.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.add(n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A sandbox directory and a stand-in "gateway binary" (a script: no ELF header to check).
struct Setup {
    dir: tempfile::TempDir,
    gateway: PathBuf,
}

impl Drop for Setup {
    // A stand-in gateway the real start script started (it sleeps) ends with the test.
    fn drop(&mut self) {
        let pid_file = self
            .dir
            .path()
            .join("sandbox/paperclip-bridge/queue/server.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

fn setup(gateway_body: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let gateway = dir.path().join("stand-in-gateway");
    write_script(&gateway, gateway_body);
    Setup { dir, gateway }
}

/// The stream transport, quick bounds, [`ATTEMPTS`] attempts with short pauses.
fn config(setup: &Setup, gateway: GatewayBinaries) -> BridgeConfig {
    // Nothing here reaches the upstream: the start fails first.
    let upstream = upstream_to("http://127.0.0.1:9", Duration::from_secs(1));
    let mut config = BridgeConfig::new(gateway, setup.dir.path().join("sandbox"), upstream);
    config.transport = TransportKind::Stream;
    config.setup_timeout = Duration::from_secs(2);
    config.ready_timeout = Duration::from_secs(2);
    config.retry = RetryPolicy {
        attempts: ATTEMPTS,
        backoff_start: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(10),
    };
    config
}

/// Starts through `runner`, which must fail: the error and what it said.
async fn start_fails(runner: &Arc<Hostile>, config: BridgeConfig) -> (DeployError, String) {
    let start = Bridge::start(runner.clone(), config);
    let result = tokio::time::timeout(SAFETY_NET, start)
        .await
        .expect("the start hung: no bound of its own ended it");
    let err = result.expect_err("the start served on hostile output");
    let text = err.to_string();
    eprintln!(
        "error: {text}\nstreams: {}, execs: {}, bytes: {:?}",
        runner.streams(),
        runner.execs.load(Ordering::SeqCst),
        runner.counts
    );
    // The sandbox's words in it are bounded and escaped (`bridge_protocol::shown`): no
    // flood, no forged line, colour or cursor move.
    assert!(
        text.len() < 4096,
        "the error is bounded: {} bytes",
        text.len()
    );
    assert!(
        !text.chars().any(|c| c.is_control()),
        "the error escapes control characters: {text:?}"
    );
    (err, text)
}

/// The error of a start whose every attempt met garbled or missing output (a channel
/// failure: retried, then given up): its last failure.
fn exhausted(runner: &Hostile, err: &DeployError) -> String {
    let DeployError::Exhausted {
        step,
        attempts,
        last,
    } = err
    else {
        panic!("not a channel failure given up after its attempts: {err:?}");
    };
    assert_eq!(*step, STEP);
    assert_eq!(*attempts, ATTEMPTS);
    assert_eq!(
        runner.streams(),
        u64::from(ATTEMPTS),
        "one stream per attempt"
    );
    last.clone()
}

/// Replaces the start with `script` (a single `binary` for any sandbox) and returns the
/// last failure after every attempt failed in the channel.
async fn garbled(script: &str) -> (Arc<Hostile>, String) {
    let setup = setup("exit 1\n");
    let runner = Hostile::replacing(script);
    let gateway = GatewayBinaries::single(&setup.gateway);
    let (err, _) = start_fails(&runner, config(&setup, gateway)).await;
    let last = exhausted(&runner, &err);
    assert_eq!(runner.execs.load(Ordering::SeqCst), 0, "no exec besides");
    (runner, last)
}

fn stdout_read(runner: &Hostile) -> u64 {
    runner.counts.stdout.load(Ordering::SeqCst)
}

fn stdin_written(runner: &Hostile) -> u64 {
    runner.counts.stdin.load(Ordering::SeqCst)
}

const MACHINE: &str = "printf 'machine x86_64\\n'\n";
const MACHINE_PID: &str = "printf 'machine x86_64\\npid 4242\\n'\n";
/// An endless line: no newline ever (one process, so killing the exec ends it).
const ENDLESS: &str = "exec tr '\\0' x < /dev/zero\n";

// (a) Floods.

/// Bound: `START_LINE_LIMIT` (`read_line` takes at most that much of a line). Without it
/// the host reads the endless line until the start's time-out: gigabytes, not 64 KiB.
#[tokio::test]
async fn an_endless_first_line_is_cut_at_the_line_limit() {
    let (runner, last) = garbled(ENDLESS).await;
    assert!(last.contains("`machine M`"), "{last}");
    assert!(last.contains("longer than 65536 bytes"), "{last}");
    let read = stdout_read(&runner);
    let most = u64::from(ATTEMPTS) * (LINE_LIMIT + BUFFERED);
    assert!(read <= most, "read {read} bytes, more than {most}");
}

/// Bound: `START_LINE_LIMIT` on the `ready.json` line, where the gateway's own file is
/// printed (a replaced gateway can write any ready.json).
#[tokio::test]
async fn an_endless_ready_json_is_cut_at_the_line_limit() {
    let (runner, last) = garbled(&format!("{MACHINE_PID}{ENDLESS}")).await;
    assert!(last.contains("`ready.json`"), "{last}");
    assert!(last.contains("longer than 65536 bytes"), "{last}");
    let read = stdout_read(&runner);
    let most = u64::from(ATTEMPTS) * (LINE_LIMIT + BUFFERED);
    assert!(read <= most, "read {read} bytes, more than {most}");
}

/// Bound: `STDERR_LIMIT` (the failed start's stderr is read only that far). Without it
/// the host reads the endless stderr for the whole aftermath bound (gigabytes).
#[tokio::test]
async fn an_endless_stderr_is_cut_at_its_limit() {
    // stdout closes (the host sees the start end); a child the kill does not reach
    // floods stderr until the host stops reading.
    let script = format!("{MACHINE}exec >&-\ntr '\\0' e < /dev/zero >&2 &\nexec sleep 600\n");
    let (runner, last) = garbled(&script).await;
    assert!(last.contains("`pid N`"), "{last}");
    let read = runner.counts.stderr.load(Ordering::SeqCst);
    let most = u64::from(ATTEMPTS) * (STDERR_LIMIT + BUFFERED);
    assert!(
        read <= most,
        "read {read} bytes of stderr, more than {most}"
    );
}

// (b) A garbled `machine` line.

/// Bound: `valid_machine` (short, plain characters). Without it `machine ../../x` passes
/// for a machine (the binary for any sandbox fits every name), the binary is chosen and
/// the start goes on to wait for `pid N`.
#[tokio::test]
async fn a_garbled_machine_line_is_refused_before_anything_is_sent() {
    let long = "a".repeat(40);
    let longer = "b".repeat(60_000);
    for machine in [
        "../../x".to_owned(),
        "\\377\\033[2J\\001".to_owned(),
        "x86_64\\r".to_owned(),
        long,
        longer,
        String::new(),
    ] {
        eprintln!("machine {machine:?}");
        // Then what a real start would print next: the host must not get that far.
        let script = format!("printf 'machine {machine}\\nupload\\n'\nexec cat >/dev/null\n");
        let (runner, last) = garbled(&script).await;
        assert!(last.contains("`machine M`"), "{last}");
        assert_eq!(stdin_written(&runner), 0, "nothing was sent");
    }
}

/// Bound: the same check on a planted `uname` in the real start script.
#[tokio::test]
async fn a_planted_uname_is_refused_in_the_real_start_script() {
    let setup = setup("exit 1\n");
    let runner = Hostile::planting(&[("uname", "printf '../../etc\\033[31m\\n'\n")]);
    let gateway = GatewayBinaries::single(&setup.gateway);
    let (err, _) = start_fails(&runner, config(&setup, gateway)).await;
    let last = exhausted(&runner, &err);
    assert!(last.contains("`machine M`"), "{last}");
    assert_eq!(stdin_written(&runner), 0, "nothing was sent");
}

/// A plausible machine name with no gateway build is the sandbox's real answer, not a
/// garbled one: a typed refusal at once (not retried), nothing sent.
#[tokio::test]
async fn a_machine_with_no_build_is_refused_once_and_typed() {
    let setup = setup("exit 1\n");
    let gateway = GatewayBinaries::new().with(Arch::X86_64, &setup.gateway);
    for (machine, aarch64) in [("sparc64", false), ("aarch64", true)] {
        let script = format!("printf 'machine {machine}\\nupload\\n'\nexec cat >/dev/null\n");
        let runner = Hostile::replacing(&script);
        let (err, _) = start_fails(&runner, config(&setup, gateway.clone())).await;
        match err {
            DeployError::NoBinaryForArch { arch, .. } if aarch64 => {
                assert_eq!(arch, Arch::Aarch64)
            }
            DeployError::UnsupportedArch { machine: m } if !aarch64 => assert_eq!(m, machine),
            other => panic!("{machine}: {other:?}"),
        }
        assert_eq!(runner.streams(), 1, "not retried");
        assert_eq!(stdin_written(&runner), 0, "nothing was sent");
    }
}

// (c) A ready.json that is not one.

/// Bound: `parse_ready` (`wire::parse` with `READY_LIMIT`, serde's nesting limit): the
/// `pid N` line, then one JSON object of the right shape. Without it none of these is
/// refused, or (the deep nesting) the host's stack is at the sandbox's mercy.
#[tokio::test]
async fn a_ready_json_that_is_not_one_is_refused() {
    let deep = "[".repeat(50_000);
    let cases = [
        ("pid 4242\\nnot json at all", "made no sense"),
        ("pid 4242\\n[1,2,3]", "made no sense"),
        ("pid 4242\\n{\"pid\":4242}", "made no sense"),
        (
            "pid 4242\\n{\"pid\":\"x\",\"host\":1,\"port\":-1,\"baseUrl\":[],\"startedAt\":{}}",
            "made no sense",
        ),
        ("pid 4242\\n\\033[2J{\"pid\":4242", "made no sense"),
        ("pid 4242\\n{\"a\":1}{\"b\":2}", "made no sense"),
        (&format!("pid 4242\\n{deep}"), "made no sense"),
        ("PID 4242\\n{}", "garbled"),
    ];
    for (printed, why) in cases {
        eprintln!("case {:?}", &printed[..printed.len().min(80)]);
        let script = format!("{MACHINE}printf '{printed}\\n'\nexec cat >/dev/null\n");
        let (_, last) = garbled(&script).await;
        assert!(last.contains(why), "{last}");
    }
}

/// Bound: `START_LINE_LIMIT` on a ready.json that is JSON, only too large (an object
/// padded past the limit): refused before it is parsed.
#[tokio::test]
async fn an_oversized_ready_json_is_refused() {
    let padding = " ".repeat(70_000);
    let json = format!(
        "{{\"pid\":4242,\"host\":\"127.0.0.1\",\"port\":1,\"baseUrl\":\"http://127.0.0.1:1\",{padding}\"startedAt\":\"t\"}}"
    );
    let script = format!("{MACHINE_PID}printf '%s\\n' '{json}'\nexec cat >/dev/null\n");
    let (_, last) = garbled(&script).await;
    assert!(last.contains("longer than 65536 bytes"), "{last}");
}

// (d) Output that stops mid-way, and the exec exits 0.

/// A start that exits 0 without `ready.json` lost or cut its output: a channel failure
/// (retried), and the error says where it stopped, not just "exit 0".
#[tokio::test]
async fn output_cut_short_with_exit_0_is_a_channel_failure_that_says_where() {
    let cases = [
        (MACHINE.to_owned(), "`pid N`"),
        ("printf 'machine x86_64\\npid 42'\n".to_owned(), "`pid N`"),
        (
            format!("{MACHINE_PID}printf '{{\"pid\":42,\"ho'\n"),
            "`ready.json`",
        ),
        ("printf 'machi'\n".to_owned(), "`machine M`"),
    ];
    for (script, where_) in cases {
        eprintln!("case {script:?}");
        let (_, last) = garbled(&format!("{script}exit 0\n")).await;
        assert!(last.contains(where_), "{last}");
        assert!(last.contains("exit 0"), "{last}");
    }
}

/// The start asks for the binary and exits 0 without reading it: the send fails or the
/// output ends; either way a channel failure that says so, within the start's bound.
#[tokio::test]
async fn a_start_that_asks_for_the_binary_and_leaves_is_a_channel_failure() {
    let (_, last) = garbled(&format!("{MACHINE}printf 'upload\\n'\nexit 0\n")).await;
    assert!(
        last.contains("sending the binary") || last.contains("`pid N`"),
        "{last}"
    );
    assert!(last.contains("exit 0"), "{last}");
}

// (e) The stream closes without anything.

/// Nothing at all, exit 0: a channel failure (the output was lost), retried, then given up.
#[tokio::test]
async fn a_start_that_prints_nothing_is_a_channel_failure() {
    let (_, last) = garbled("exit 0\n").await;
    assert!(last.contains("`machine M`"), "{last}");
    assert!(last.contains("exit 0"), "{last}");
}

/// Bound: `AFTERMATH_BOUND` (how long a failed start's exit is waited for). stdout closes
/// at once, the process lives on: without the bound the host waits for it for good.
#[tokio::test]
async fn a_start_that_closes_its_output_and_lives_on_is_ended() {
    let (_, last) = garbled("exec >&- 2>&-\nexec sleep 600\n").await;
    assert!(last.contains("`machine M`"), "{last}");
}

/// Bound: the start's own time-out (the start script's bound plus the set-up bound).
/// Silence with the output open: without it the host waits for `machine M` for good.
#[tokio::test]
async fn a_silent_start_ends_at_its_bound() {
    let setup = setup("exit 1\n");
    let runner = Hostile::replacing("exec sleep 600\n");
    let mut config = config(&setup, GatewayBinaries::single(&setup.gateway));
    config.setup_timeout = Duration::from_millis(200);
    config.ready_timeout = Duration::from_millis(100);
    let (err, _) = start_fails(&runner, config).await;
    let last = exhausted(&runner, &err);
    assert!(last.contains("no ready.json within"), "{last}");
}

/// The start script's own failure (exit 3 and why on stderr) is reported at once.
#[tokio::test]
async fn a_start_that_fails_on_its_own_is_not_retried() {
    let setup = setup("exit 1\n");
    let runner = Hostile::replacing("echo 'no space left on device' >&2\nexit 3\n");
    let config = config(&setup, GatewayBinaries::single(&setup.gateway));
    let (err, text) = start_fails(&runner, config).await;
    assert!(
        matches!(err, DeployError::Script { code: Some(3), .. }),
        "{err:?}"
    );
    assert!(text.contains("no space left on device"), "{text}");
    assert_eq!(runner.streams(), 1, "not retried");
}

// A replaced gateway binary, through the real start script.

/// A stand-in gateway that runs `write` (in the queue, where the start script starts it)
/// and then lives (as itself, so the next attempt's start script knows it for this
/// deployment's gateway); its `session` ends at once (the host refuses the start before
/// it would read one).
fn stand_in(write: &str) -> String {
    format!("[ \"$1\" = session ] && exit 0\n{write}\nwhile sleep 1; do :; done\n")
}

/// The real start script uploads a "gateway" that writes a garbage ready.json (escape
/// sequences, not JSON) and exits: refused by `parse_ready`, each attempt, and the binary
/// crossed stdin once (the second attempt finds it installed).
#[tokio::test]
async fn a_gateway_that_writes_a_garbage_ready_json_is_refused() {
    let setup = setup(&stand_in(
        "printf '\\033[2J\\033[31mready!\\n' > ready.json.tmp && mv ready.json.tmp ready.json",
    ));
    let runner = Hostile::planting(&[]);
    let size = std::fs::metadata(&setup.gateway).unwrap().len();
    let (err, _) = start_fails(
        &runner,
        config(&setup, GatewayBinaries::single(&setup.gateway)),
    )
    .await;
    let last = exhausted(&runner, &err);
    assert!(last.contains("ready.json made no sense"), "{last}");
    let sent = stdin_written(&runner);
    assert!(
        sent > size && sent < size + 100,
        "the binary and its header crossed once: {sent} bytes for {size}"
    );
}

/// Bound: `START_LINE_LIMIT` again, on a real start script whose replaced gateway wrote
/// a megabyte of ready.json with no newline.
#[tokio::test]
async fn a_gateway_that_writes_a_huge_ready_json_is_cut() {
    let setup = setup(&stand_in(
        "head -c 1000000 /dev/zero | tr '\\0' x > ready.json.tmp && mv ready.json.tmp ready.json",
    ));
    let runner = Hostile::planting(&[]);
    let (err, _) = start_fails(
        &runner,
        config(&setup, GatewayBinaries::single(&setup.gateway)),
    )
    .await;
    let last = exhausted(&runner, &err);
    assert!(last.contains("longer than 65536 bytes"), "{last}");
    let read = stdout_read(&runner);
    let most = u64::from(ATTEMPTS) * (LINE_LIMIT + BUFFERED);
    assert!(read <= most, "read {read} bytes, more than {most}");
}
