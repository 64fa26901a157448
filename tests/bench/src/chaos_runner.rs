//! The chaos harness's fault injector: a runner around the real sandbox's that, once
//! armed, fails, loses, stalls or cuts the bridge's execs and streams at a set rate, as a
//! provider's exec channel does on a bad day, and counts every fault it injected (a green
//! run with no faults counted would prove nothing).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bridge_host::runner::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Runner, RunnerError, Spawn,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use std::future::Future as _;

/// The faults, by name, in the order they are reported.
pub const FAULTS: [&str; 5] = [
    "exec failed",
    "exec lost",
    "exec stalled",
    "stream refused",
    "stream cut",
];

/// Exit status of an exec whose channel failed (ssh's 255).
const CHANNEL_FAILED: i32 = 255;
/// A stream lives a random time up to this divided by the rate once faults are armed
/// (30 %: up to 3.3 s; 10 %: up to 10 s), then it is cut.
const STREAM_LIFE_AT_FULL_RATE: Duration = Duration::from_secs(1);
/// How often a stream checks whether its cut is due.
const CUT_CHECK: Duration = Duration::from_millis(50);

/// A runner that injects faults into `inner`'s execs and streams once armed.
#[derive(Debug)]
pub struct ChaosRunner {
    inner: Arc<dyn Runner>,
    rate: f64,
    armed: Arc<Armed>,
    rng: Mutex<u64>,
    counts: Arc<[AtomicU64; 5]>,
}

impl ChaosRunner {
    /// Faults at `rate` (0..1) of execs and streams, from a random seed.
    pub fn new(inner: Arc<dyn Runner>, rate: f64) -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self {
            inner,
            rate,
            armed: Arc::default(),
            rng: Mutex::new(u64::from_le_bytes(seed) | 1),
            counts: Default::default(),
        }
    }

    /// Starts (or stops) injecting faults.
    pub fn arm(&self, on: bool) {
        self.armed.set(on);
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        FAULTS
            .iter()
            .zip(self.counts.iter())
            .map(|(name, n)| (*name, n.load(Ordering::SeqCst)))
            .collect()
    }

    fn counts_handle(&self) -> Arc<[AtomicU64; 5]> {
        self.counts.clone()
    }

    /// A number in 0..1 (xorshift: fast, and good enough to spread faults).
    fn roll(&self) -> f64 {
        let mut state = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Which fault (index into [`FAULTS`]) hits this call, if any: one of `kinds`.
    fn fault(&self, kinds: &[usize]) -> Option<usize> {
        if !self.armed.is_on() || self.roll() >= self.rate {
            return None;
        }
        let kind = kinds[((self.roll() * kinds.len() as f64) as usize).min(kinds.len() - 1)];
        self.counts[kind].fetch_add(1, Ordering::SeqCst);
        Some(kind)
    }
}

fn channel_failed(what: &str) -> ExecOutput {
    ExecOutput {
        code: Some(CHANNEL_FAILED),
        stderr: format!("chaos: {what}\n").into_bytes(),
        ..ExecOutput::default()
    }
}

impl Runner for ChaosRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            match self.fault(&[0, 1, 2]) {
                Some(0) => Ok(channel_failed("the exec was lost before it ran")),
                Some(1) => {
                    let _ = self.inner.exec(exec).await;
                    Ok(channel_failed("the exec ran, its result was lost"))
                }
                Some(_) => {
                    // No answer until the exec's own bound, as a hung provider call.
                    tokio::time::sleep(exec.timeout).await;
                    Ok(ExecOutput {
                        code: None,
                        timed_out: true,
                        ..ExecOutput::default()
                    })
                }
                None => self.inner.exec(exec).await,
            }
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            if self.fault(&[3]).is_some() {
                return Err(RunnerError::Io(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "chaos: the stream could not be opened",
                )));
            }
            let stream = self.inner.stream(spawn).await?;
            // Every stream is cut some time after faults are armed (a stream opened before
            // is not spared), each after its own random life.
            let life = STREAM_LIFE_AT_FULL_RATE.mul_f64(self.roll() / self.rate.max(0.01));
            let cut = Arc::new(CutPlan {
                armed: self.armed.clone(),
                life,
                counted: AtomicBool::new(false),
                counter: self.counts_handle(),
            });
            Ok(ExecStream {
                stdin: Box::pin(Cut::new(stream.stdin, cut.clone())),
                stdout: Box::pin(Cut::new(stream.stdout, cut)),
                stderr: stream.stderr,
                process: stream.process,
            })
        })
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Whether faults are being injected, and since when.
#[derive(Debug, Default)]
struct Armed {
    since: Mutex<Option<Instant>>,
}

impl Armed {
    fn set(&self, on: bool) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        *since = match (on, *since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(Instant::now()),
            (false, _) => None,
        };
    }

    fn is_on(&self) -> bool {
        self.since().is_some()
    }

    fn since(&self) -> Option<Instant> {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When one stream is cut: `life` after it was opened armed, or after arming.
struct CutPlan {
    armed: Arc<Armed>,
    life: Duration,
    counted: AtomicBool,
    counter: Arc<[AtomicU64; 5]>,
}

impl CutPlan {
    fn due(&self, opened: Instant) -> bool {
        let Some(since) = self.armed.since() else {
            return false;
        };
        let due = Instant::now() >= since.max(opened) + self.life;
        if due && !self.counted.swap(true, Ordering::SeqCst) {
            self.counter[4].fetch_add(1, Ordering::SeqCst);
        }
        due
    }
}

/// A pipe that its plan cuts: reads then see the end of the stream, writes a broken pipe,
/// as when a provider's connection drops (the process itself may live on).
struct Cut<T> {
    inner: T,
    plan: Arc<CutPlan>,
    opened: Instant,
    tick: Pin<Box<Sleep>>,
    cut: bool,
}

impl<T> Cut<T> {
    fn new(inner: T, plan: Arc<CutPlan>) -> Self {
        Self {
            inner,
            plan,
            opened: Instant::now(),
            tick: Box::pin(tokio::time::sleep(CUT_CHECK)),
            cut: false,
        }
    }

    /// Cut yet? If not, a wake-up is set for the next check.
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.cut && self.plan.due(self.opened) {
            self.cut = true;
        }
        if !self.cut {
            while self.tick.as_mut().poll(cx).is_ready() {
                let next = Instant::now() + CUT_CHECK;
                self.tick.as_mut().reset(next);
            }
        }
        self.cut
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Cut<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

fn broken() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "chaos: the stream was cut")
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Cut<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
