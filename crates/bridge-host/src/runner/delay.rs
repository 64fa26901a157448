//! An exec-latency injector: a runner that adds a fixed delay to every exec, standing in
//! for a hosted sandbox provider's round trip (benchmarks).
//!
//! A plain exec waits the whole delay before it starts. A stream waits it once at start,
//! and then every byte is delivered half the delay late in each direction (a pipelined
//! delay line, so bandwidth is not limited): one message and its answer cost one delay,
//! as a round trip over a provider's streaming exec would.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Runner, RunnerError, Spawn};

/// Bytes in flight inside one delay line before its reader is held back.
const LINE_BUFFER: usize = 1024 * 1024;
/// Chunks in flight inside one delay line.
const LINE_CHUNKS: usize = 4096;
/// How early tokio's timer is asked to wake before a deadline; the rest is slept on a
/// blocking thread (see [`wait_until`]).
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Wraps a runner; every exec waits `delay` first.
#[derive(Debug)]
pub struct DelayRunner {
    inner: Arc<dyn Runner>,
    delay: Duration,
}

impl DelayRunner {
    /// `inner`, with `delay` added to every exec's start and to each stream's round trip.
    pub fn new(inner: Arc<dyn Runner>, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl Runner for DelayRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            wait_until(Instant::now() + self.delay).await;
            self.inner.exec(exec).await
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            if self.delay.is_zero() {
                // No delay lines: each would still cost a timer tick.
                return self.inner.stream(spawn).await;
            }
            // The request to start travels one way before the process starts; what it
            // prints comes back the other way.
            let one_way = self.delay / 2;
            wait_until(Instant::now() + one_way).await;
            let inner = self.inner.stream(spawn).await?;
            Ok(ExecStream {
                stdin: delayed_writer(inner.stdin, one_way),
                stdout: delayed_reader(inner.stdout, one_way),
                stderr: delayed_reader(inner.stderr, one_way),
                process: inner.process,
            })
        })
    }

    fn upload(
        &self,
        path: std::path::PathBuf,
        bytes: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async move {
            wait_until(Instant::now() + self.delay).await;
            self.inner.upload(path, bytes).await
        })
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// What is read from the result comes out of `inner` `by` later.
pub fn delayed_reader(
    inner: Pin<Box<dyn AsyncRead + Send>>,
    by: Duration,
) -> Pin<Box<dyn AsyncRead + Send>> {
    Box::pin(relayed(|ours| delay_line(inner, ours, by)))
}

/// What is written to the result reaches `inner` `by` later (and its end, too).
pub fn delayed_writer(
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    by: Duration,
) -> Pin<Box<dyn AsyncWrite + Send>> {
    Box::pin(relayed(|ours| delay_line(ours, inner, by)))
}

/// One end of a fresh in-memory pipe; `relay` gets the other and starts the task that
/// copies through it, detached: that task ends with its streams.
fn relayed(relay: impl FnOnce(DuplexStream) -> tokio::task::JoinHandle<()>) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(LINE_BUFFER);
    drop(relay(ours));
    theirs
}

/// Copies `from` to `to`, each chunk `by` after it was read; the end of `from` is passed
/// on (shutdown) after the last chunk. Two tasks, so reading never waits for the delay;
/// the returned one ends when everything has been written.
pub fn delay_line<R, W>(mut from: R, mut to: W, by: Duration) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(LINE_CHUNKS);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = (Instant::now() + by, buf[..n].to_vec());
                    if chunks.send(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some((at, bytes)) = due.recv().await {
            wait_until(at).await;
            if to.write_all(&bytes).await.is_err() || to.flush().await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    })
}

/// Waits until `at`, to about 0.1 ms. tokio's timer rounds every deadline up to the next
/// whole millisecond, which would add up to a millisecond per leg that a real network does
/// not (measured: 28.5 ms sequential at d = 25 ms); so it sleeps to just before the
/// deadline and a blocking thread sleeps the rest.
async fn wait_until(at: Instant) {
    if at <= Instant::now() {
        return;
    }
    if let Some(early) = at.checked_sub(TIMER_SLACK).filter(|e| *e > Instant::now()) {
        tokio::time::sleep_until(early).await;
    }
    let rest = at.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        // If the blocking pool is gone (runtime shutting down), the wait ends early.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delay_line_delays_every_chunk_and_passes_the_end_on() {
        let (mut input, source) = tokio::io::duplex(1024);
        let mut output = delayed_reader(Box::pin(source), Duration::from_millis(40));
        let started = Instant::now();
        input.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        output.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");
        assert!(started.elapsed() >= Duration::from_millis(40));
        drop(input);
        let mut rest = Vec::new();
        output.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline_not_before() {
        for ms in [0, 1, 3, 10] {
            let at = Instant::now() + Duration::from_millis(ms);
            wait_until(at).await;
            assert!(Instant::now() >= at, "{ms} ms");
        }
    }
}
