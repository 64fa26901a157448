//! Deployment over a flaky exec channel: a runner wrapper injects channel faults (refused
//! connections, results lost after the script ran, stalls, spawn failures, cut output)
//! from the very first exec and counts every fault it injects, so a green run is known to
//! have met them. Deployment must still succeed with exactly one gateway, calls must
//! work, and a channel that always fails must end deployment with a clear, bounded error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_host::deploy::{Bridge, BridgeConfig, RetryPolicy};
use bridge_host::runner::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, LocalRunner, Runner, RunnerError, Spawn,
};
use bridge_host::transport::TransportKind;
use common::*;

/// One way the exec channel fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The connection is refused before the script runs (ssh's exit 255).
    Refused,
    /// The script runs, then its result is lost (exit 255, no output).
    RanThenLost,
    /// The channel hangs until the exec's time-out (reported as timed out).
    Stall,
    /// The channel hangs for good: the runner never answers.
    Hang,
    /// The exec client cannot be started.
    SpawnFailed,
    /// The script runs, but only half of its stdout arrives.
    Cut,
}

/// Which execs fail: a repeating pattern, or every one.
#[derive(Debug, Clone)]
enum Plan {
    Cycle(Vec<Option<Fault>>),
    Always(Fault),
}

/// The local runner behind a faulty channel that counts what it injects.
#[derive(Debug)]
struct Flaky {
    plan: Plan,
    execs: AtomicU64,
    injected: Mutex<BTreeMap<Fault, u64>>,
    /// Starts of the gateway (execs carrying the bridge token) whose result was lost
    /// after the script ran: the case that would start a second gateway.
    lost_starts: AtomicU64,
    /// Lose the first start's result after it ran.
    lose_first_start: bool,
    /// Faults for streaming execs (the one-exec start-up), a repeating pattern.
    stream_plan: Vec<Option<Fault>>,
    streams: AtomicU64,
}

impl Flaky {
    fn new(plan: Plan, lose_first_start: bool) -> Arc<Self> {
        Arc::new(Self {
            plan,
            execs: AtomicU64::new(0),
            injected: Mutex::default(),
            lost_starts: AtomicU64::new(0),
            lose_first_start,
            stream_plan: vec![None],
            streams: AtomicU64::new(0),
        })
    }

    /// A runner whose execs work and whose streams fail by `pattern`.
    fn streaming(pattern: Vec<Option<Fault>>) -> Arc<Self> {
        let mut flaky = Arc::into_inner(Flaky::new(Plan::Cycle(vec![None]), false)).unwrap();
        flaky.stream_plan = pattern;
        Arc::new(flaky)
    }

    fn fault_for(&self, n: u64, exec: &Exec) -> Option<Fault> {
        let start = exec.env.iter().any(|(k, _)| k == "PAPERCLIP_BRIDGE_TOKEN");
        if start && self.lose_first_start && self.lost_starts.load(Ordering::SeqCst) == 0 {
            self.lost_starts.fetch_add(1, Ordering::SeqCst);
            return Some(Fault::RanThenLost);
        }
        match &self.plan {
            Plan::Always(fault) => Some(*fault),
            Plan::Cycle(pattern) => pattern[(n % pattern.len() as u64) as usize],
        }
    }

    fn injected(&self) -> BTreeMap<Fault, u64> {
        self.injected.lock().unwrap().clone()
    }

    fn total_injected(&self) -> u64 {
        self.injected().values().sum()
    }
}

fn lost() -> ExecOutput {
    ExecOutput {
        code: Some(255),
        stderr: b"ssh: connection to sandbox closed by remote host".to_vec(),
        ..ExecOutput::default()
    }
}

impl Runner for Flaky {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            let n = self.execs.fetch_add(1, Ordering::SeqCst);
            let Some(fault) = self.fault_for(n, &exec) else {
                return LocalRunner.exec(exec).await;
            };
            *self.injected.lock().unwrap().entry(fault).or_default() += 1;
            match fault {
                Fault::Refused => Ok(ExecOutput {
                    code: Some(255),
                    stderr: b"ssh: connect to host sandbox: Connection reset by peer".to_vec(),
                    ..ExecOutput::default()
                }),
                Fault::RanThenLost => {
                    let _ = LocalRunner.exec(exec).await;
                    Ok(lost())
                }
                Fault::Stall => {
                    tokio::time::sleep(exec.timeout).await;
                    Ok(ExecOutput {
                        timed_out: true,
                        ..ExecOutput::default()
                    })
                }
                Fault::Hang => std::future::pending().await,
                Fault::SpawnFailed => Err(RunnerError::Spawn {
                    program: "ssh".into(),
                    source: std::io::Error::other("resource temporarily unavailable"),
                }),
                Fault::Cut => {
                    let mut out = LocalRunner.exec(exec).await?;
                    out.stdout.truncate(out.stdout.len() / 2);
                    Ok(out)
                }
            }
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            let n = self.streams.fetch_add(1, Ordering::SeqCst) as usize;
            let Some(fault) = self.stream_plan[n % self.stream_plan.len()] else {
                return LocalRunner.stream(spawn).await;
            };
            *self.injected.lock().unwrap().entry(fault).or_default() += 1;
            match fault {
                Fault::SpawnFailed => Err(RunnerError::Spawn {
                    program: "ssh".into(),
                    source: std::io::Error::other("resource temporarily unavailable"),
                }),
                // The script runs (long enough to start the gateway), then the stream
                // drops: nothing it printed arrives.
                _ => {
                    let mut stream = LocalRunner.stream(spawn).await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    stream.process.kill();
                    stream.stdout = Box::pin(tokio::io::empty());
                    stream.stderr = Box::pin(tokio::io::empty());
                    Ok(stream)
                }
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        LocalRunner.capabilities()
    }
}

/// Deploys through `flaky`, which must fail within `bound`; returns the error's text.
async fn start_fails(flaky: &Arc<Flaky>, config: BridgeConfig, bound: Duration) -> String {
    let started = Instant::now();
    let err = Bridge::start(flaky.clone(), config)
        .await
        .unwrap_err()
        .to_string();
    eprintln!("error: {err}; faults injected: {:?}", flaky.injected());
    assert!(started.elapsed() < bound, "not within {bound:?}: {err}");
    err
}

fn config(recorder: &Recorder, dir: &Path) -> BridgeConfig {
    let upstream = upstream_to(&recorder.url, Duration::from_secs(10));
    let mut config = BridgeConfig::new(gateway_bin(), dir.to_path_buf(), upstream);
    config.worker.drain_timeout = Duration::from_millis(300);
    config.stop_grace = Duration::from_secs(5);
    config.setup_timeout = Duration::from_secs(1);
    config.ready_timeout = Duration::from_secs(3);
    config.restart.check_interval = Duration::from_millis(100);
    // The exec faults below meet the step-by-step deployment (one exec a step); the
    // one-exec streaming start has its own test.
    config.transport = TransportKind::OneShot;
    config
}

/// Pids of gateways serving (no subcommand) with the binary at `binary`.
fn gateways(binary: &Path) -> Vec<u32> {
    let wanted = binary.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            args == [wanted.as_bytes()]
        })
        .collect()
}

/// Calls the gateway from this machine (the local runner shares it) and returns statuses.
async fn call(env: &[(String, String)], times: usize) -> String {
    let script = format!(
        "for i in $(seq {times}); do curl -sS -o /dev/null -w '%{{http_code}} ' -H \"Authorization: Bearer $PAPERCLIP_API_KEY\" \"$PAPERCLIP_API_URL/api/agents/me\"; done"
    );
    let mut exec = Exec::new(script, Duration::from_secs(30));
    exec.env = env.to_vec();
    let out = LocalRunner.exec(exec).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn remote_binary(dir: &Path) -> PathBuf {
    dir.join("paperclip-bridge/bin/paperclip-bridge-server")
}

#[tokio::test]
async fn deployment_through_a_faulty_channel_starts_one_gateway_that_serves() {
    use Fault::*;
    let (recorder, dir) = recorder_and_dir().await;
    // Faults from the first exec on, never more than two in a row (each step may try six
    // times); and the first start's result is lost after it started the gateway.
    let pattern = vec![
        Some(Refused),
        Some(SpawnFailed),
        None,
        Some(Cut),
        Some(Stall),
        None,
        Some(RanThenLost),
        None,
    ];
    let flaky = Flaky::new(Plan::Cycle(pattern), true);
    let bridge = Bridge::start(flaky.clone(), config(&recorder, dir.path()))
        .await
        .unwrap();
    let injected = flaky.injected();
    eprintln!("faults injected during deployment: {injected:?}");
    assert_eq!(
        flaky.lost_starts.load(Ordering::SeqCst),
        1,
        "a start's result was lost"
    );
    assert!(
        injected.contains_key(&Refused),
        "the first exec was refused: {injected:?}"
    );
    assert!(flaky.total_injected() >= 4, "{injected:?}");
    assert!(
        injected.len() >= 4,
        "most kinds of fault were met: {injected:?}"
    );
    let binary = remote_binary(dir.path());
    assert_eq!(gateways(&binary).len(), 1, "exactly one gateway runs");
    assert_eq!(call(&bridge.agent_env(), 3).await, "200 200 200");
    // Liveness checks meet the same faults: none of them may pass for a crash.
    let before = flaky.execs.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while flaky.execs.load(Ordering::SeqCst) < before + 12 {
        assert!(Instant::now() < deadline, "no liveness checks were made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("faults injected in all: {:?}", flaky.injected());
    assert_eq!(
        bridge.restart_count(),
        0,
        "a channel fault was taken for a crash"
    );
    assert_eq!(gateways(&binary).len(), 1, "still exactly one gateway");
    assert_eq!(call(&bridge.agent_env(), 2).await, "200 200");
    bridge.stop().await.unwrap();
    assert!(
        gateways(&binary).is_empty(),
        "the gateway is gone after stop"
    );
}

#[tokio::test]
async fn the_one_exec_start_survives_a_faulty_stream_with_one_gateway() {
    use Fault::*;
    let (recorder, dir) = recorder_and_dir().await;
    // The first stream cannot open, the second runs the start and is lost.
    let flaky = Flaky::streaming(vec![Some(SpawnFailed), Some(RanThenLost), None]);
    let mut config = config(&recorder, dir.path());
    config.transport = TransportKind::Stream;
    let bridge = Bridge::start(flaky.clone(), config).await.unwrap();
    let injected = flaky.injected();
    eprintln!("faults injected: {injected:?}");
    assert_eq!(injected.get(&SpawnFailed), Some(&1), "{injected:?}");
    assert_eq!(injected.get(&RanThenLost), Some(&1), "{injected:?}");
    assert_eq!(flaky.streams.load(Ordering::SeqCst), 3, "two retries");
    let binary = remote_binary(dir.path());
    assert_eq!(gateways(&binary).len(), 1, "exactly one gateway runs");
    assert_eq!(call(&bridge.agent_env(), 3).await, "200 200 200");
    assert_eq!(
        bridge.worker().exec_count(),
        1,
        "the start became the session"
    );
    bridge.stop().await.unwrap();
    assert!(
        gateways(&binary).is_empty(),
        "the gateway is gone after stop"
    );
}

#[tokio::test]
async fn a_channel_that_always_fails_ends_deployment_with_a_clear_bounded_error() {
    let (recorder, dir) = recorder_and_dir().await;
    let flaky = Flaky::new(Plan::Always(Fault::Refused), false);
    let mut config = config(&recorder, dir.path());
    config.retry = RetryPolicy {
        attempts: 4,
        backoff_start: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
    };
    let err = start_fails(&flaky, config, Duration::from_secs(30)).await;
    assert!(
        err.contains("preparing the queue directory"),
        "names the step: {err}"
    );
    assert!(err.contains("4 attempts"), "names the attempts: {err}");
    assert!(
        err.contains("Connection reset by peer"),
        "names the last failure: {err}"
    );
    assert_eq!(flaky.injected().get(&Fault::Refused), Some(&4));
}

#[tokio::test]
async fn a_stalled_channel_ends_deployment_within_the_bound() {
    let (recorder, dir) = recorder_and_dir().await;
    let flaky = Flaky::new(Plan::Always(Fault::Hang), false);
    let mut config = config(&recorder, dir.path());
    config.setup_timeout = Duration::from_millis(200);
    config.retry.attempts = 2;
    let err = start_fails(&flaky, config, Duration::from_secs(60)).await;
    assert!(
        err.contains("2 attempts") && err.contains("no answer"),
        "{err}"
    );
    assert_eq!(flaky.injected().get(&Fault::Hang), Some(&2));
}

#[tokio::test]
async fn a_script_that_fails_on_its_own_is_not_retried() {
    let (recorder, dir) = recorder_and_dir().await;
    // A file where the sandbox directory should be: mkdir fails in the script itself.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let flaky = Flaky::new(Plan::Cycle(vec![None]), false);
    let err = Bridge::start(flaky.clone(), config(&recorder, &blocked))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("preparing the queue directory failed in the sandbox"),
        "{err}"
    );
    assert_eq!(flaky.execs.load(Ordering::SeqCst), 1, "tried once: {err}");
}

#[tokio::test]
async fn a_second_deployment_on_one_queue_replaces_the_first_gateway() {
    let (recorder, dir) = recorder_and_dir().await;
    let first = Bridge::start(Arc::new(LocalRunner), config(&recorder, dir.path()))
        .await
        .unwrap();
    let binary = remote_binary(dir.path());
    let old = gateways(&binary);
    assert_eq!(old.len(), 1);
    // The host that ran the first one is gone (its supervisor and worker with it).
    drop(first);
    let second = Bridge::start(Arc::new(LocalRunner), config(&recorder, dir.path()))
        .await
        .unwrap();
    let now = gateways(&binary);
    assert_eq!(now.len(), 1, "one gateway per queue: {now:?}");
    assert_ne!(now, old, "the new deployment's gateway serves");
    assert_eq!(call(&second.agent_env(), 1).await, "200");
    second.stop().await.unwrap();
}
