//! The streaming transport when its session misbehaves: an old gateway without `session`,
//! a session that stops answering, one that prints garbage, and the latency injector's
//! streams, and an attacker's session program (replies longer or with more items than the
//! host asked for). Each failure is a clear, bounded error, and the next call starts afresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_host::runner::{DelayRunner, LocalRunner, MemoryRunner};
use bridge_host::transport::{PutItem, StreamTransport, TakeOptions, Transport, TransportError};
use common::*;
use tokio::io::{AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader};

/// A stand-in gateway binary: a shell script.
fn fake_binary(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("fake-gateway");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn transport(q: &Path, binary: PathBuf, bound: Duration) -> StreamTransport {
    StreamTransport::new(Arc::new(LocalRunner), q.to_path_buf(), binary, bound)
}

#[tokio::test]
async fn a_gateway_without_sessions_is_a_clear_error() {
    let dir = queue_dir();
    let old = fake_binary(
        dir.path(),
        r#"echo "paperclip-bridge-server: unknown command \"$1\"" >&2; exit 2"#,
    );
    let t = transport(dir.path(), old, Duration::from_secs(5));
    let err = t.take(take_opts()).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Session(why) if why.contains("unknown command \"session\"")),
        "{err}"
    );
}

#[tokio::test]
async fn a_session_that_stops_answering_is_killed_within_its_bound() {
    let dir = queue_dir();
    let pid_file = dir.path().join("session.pid");
    let hung = fake_binary(
        dir.path(),
        &format!(
            r#"echo $$ > '{}'; echo '{{"session":1}}'; exec sleep 1000"#,
            pid_file.display()
        ),
    );
    let t = transport(dir.path(), hung, Duration::from_millis(500));
    let started = Instant::now();
    let err = t.take(take_opts()).await.unwrap_err();
    assert!(matches!(err, TransportError::TimedOut(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z "))
    });
    assert!(gone, "the hung session was not killed");
}

#[tokio::test]
async fn garbage_fails_the_call_and_the_next_call_opens_a_new_session() {
    let dir = queue_dir();
    let count = dir.path().join("starts");
    // The first session prints garbage; later ones are the real gateway's.
    let flaky = fake_binary(
        dir.path(),
        &format!(
            r#"if [ ! -e '{count}' ]; then : > '{count}'; echo '{{"session":1}}'; echo 'Welcome!'; exec sleep 1000; fi
exec '{real}' "$@""#,
            count = count.display(),
            real = gateway_bin().display()
        ),
    );
    write_request(dir.path(), "g1", "{}");
    let t = transport(dir.path(), flaky, Duration::from_secs(5));
    let err = t.take(take_opts()).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Session(why) if why.contains("unreadable")),
        "{err}"
    );
    let taken = t.take(take_opts()).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, "g1");
    assert_eq!(t.exec_count(), 2, "one session per start");
}

#[tokio::test]
async fn an_injected_delay_costs_one_delay_per_round_trip_on_a_stream() {
    let dir = queue_dir();
    let delay = Duration::from_millis(200);
    let runner = Arc::new(DelayRunner::new(Arc::new(LocalRunner), delay));
    let t = StreamTransport::new(
        runner,
        dir.path().to_path_buf(),
        gateway_bin(),
        Duration::from_secs(10),
    );
    let started = Instant::now();
    t.take(take_opts()).await.unwrap();
    assert!(
        started.elapsed() >= delay * 2,
        "opening costs one delay, the round trip another"
    );
    let started = Instant::now();
    t.take(take_opts()).await.unwrap();
    assert!(started.elapsed() >= delay);
    assert_eq!(t.exec_count(), 1);
}

#[tokio::test]
async fn a_take_given_up_on_stops_waiting_in_the_session() {
    let dir = queue_dir();
    let t = transport(dir.path(), gateway_bin(), Duration::from_secs(60));
    let long_poll = TakeOptions {
        wait: Duration::from_secs(30),
        ..take_opts()
    };
    // A stopping worker drops its outstanding long poll...
    let dropped = tokio::time::timeout(Duration::from_millis(300), t.take(long_poll)).await;
    assert!(
        dropped.is_err(),
        "nothing was queued, so the take was still waiting"
    );
    // ...and its sweep must not wait behind that poll's 30 s.
    write_request(dir.path(), "c1", "{}");
    let swept = tokio::time::timeout(Duration::from_secs(5), t.take(take_opts()))
        .await
        .expect("the sweep waited behind the abandoned long poll")
        .unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(t.exec_count(), 1);
}

#[tokio::test]
async fn what_the_early_poll_claimed_reaches_the_sweep_as_never_sent() {
    let dir = queue_dir();
    let t = transport(dir.path(), gateway_bin(), Duration::from_secs(60));
    let long_poll = TakeOptions {
        wait: Duration::from_secs(30),
        ..take_opts()
    };
    write_request(dir.path(), "r1", "{}");
    assert_eq!(t.take(long_poll).await.unwrap()[0].id, "r1");
    // The next long poll is already waiting in the session, and claims r2 at once.
    write_request(dir.path(), "r2", "{}");
    let claim = dir.path().join("requests/r2.claimed");
    for _ in 0..200 {
        if claim.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(claim.exists(), "the early poll did not take r2");
    // The worker stops: its sweep looks at everything, claimed or not.
    let sweep = TakeOptions {
        include_claimed: true,
        ..take_opts()
    };
    let swept = tokio::time::timeout(Duration::from_secs(5), t.take(sweep))
        .await
        .expect("the sweep waited behind the early poll")
        .unwrap();
    // r1 was taken (and not answered) before: it is claimed. r2 comes once, as ours.
    let r2: Vec<_> = swept.iter().filter(|i| i.id == "r2").collect();
    assert_eq!(r2.len(), 1, "{swept:?}");
    assert!(
        !r2[0].previously_claimed,
        "r2 was never forwarded: it must not be answered as indeterminate"
    );
    assert!(swept.iter().any(|i| i.id == "r1" && i.previously_claimed));
}

#[tokio::test]
async fn a_session_that_stops_reading_cannot_block_a_put() {
    let dir = queue_dir();
    // Greets, then never reads its stdin again: a large put fills the pipe.
    let deaf = fake_binary(dir.path(), r#"echo '{"session":1}'; exec sleep 1000"#);
    let t = transport(dir.path(), deaf, Duration::from_millis(500));
    let big = PutItem {
        id: "p1".into(),
        file: vec![b'x'; 4 * 1024 * 1024],
    };
    let put = tokio::time::timeout(Duration::from_secs(10), t.deliver(vec![big]))
        .await
        .expect("the put's write was not bounded");
    assert!(matches!(put, Err(TransportError::TimedOut(_))), "{put:?}");
}

/// The stream transport's session script (as `transport::stream` sends it).
const SESSION_SCRIPT: &str = r#"exec "$BIN" session --queue-dir "$Q""#;

/// A sandbox whose session program is the attacker's: it greets, reads one command, then
/// runs `reply` on its stdout; `starts` counts the sessions opened.
fn rogue<F, Fut>(reply: F) -> (StreamTransport, Arc<AtomicUsize>)
where
    F: Fn(Pin<Box<dyn AsyncWrite + Send>>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let runner = MemoryRunner::new().with_program(SESSION_SCRIPT, move |mut run| {
        let (reply, starts) = (reply.clone(), counted.clone());
        async move {
            starts.fetch_add(1, Ordering::Relaxed);
            let _ = run.stdout.write_all(b"{\"session\":1}\n").await;
            let mut command = String::new();
            let _ = BufReader::new(run.stdin).read_line(&mut command).await;
            reply(run.stdout).await;
            0
        }
    });
    let t = StreamTransport::new(
        Arc::new(runner),
        PathBuf::from("/nowhere"),
        PathBuf::from("gateway"),
        Duration::from_secs(5),
    );
    (t, starts)
}

/// A take asking for little: 1 KiB batches and envelopes, no wait.
fn small_take() -> TakeOptions {
    TakeOptions {
        max_batch_bytes: 1024,
        envelope_limit: 1024,
        ..take_opts()
    }
}

#[tokio::test]
async fn one_endless_reply_line_is_refused_without_buffering_beyond_its_bound() {
    let written = Arc::new(AtomicUsize::new(0));
    let sent = written.clone();
    let (t, starts) = rogue(move |mut out| {
        let sent = sent.clone();
        async move {
            let _ = out.write_all(br#"{"seq":1,"taken":["#).await;
            let chunk = b"{},".repeat(1 << 14);
            // 16 MiB of tiny items, far more than a 1 KiB take may bring back.
            while sent.load(Ordering::Relaxed) < 16 << 20 {
                if out.write_all(&chunk).await.is_err() {
                    return;
                }
                sent.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            let _ = out.write_all(b"{}]}\n").await;
            std::future::pending::<()>().await;
        }
    });
    let started = Instant::now();
    let err = t.take(small_take()).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Session(why) if why.contains("longer than")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let read = written.load(Ordering::Relaxed);
    assert!(
        read <= 4 << 20,
        "the host read {read} bytes of one reply line"
    );
    assert!(t.take(small_take()).await.is_err());
    assert_eq!(starts.load(Ordering::Relaxed), 2, "each failure reopens");
}

#[tokio::test]
async fn a_reply_of_too_many_items_is_refused() {
    let (t, starts) = rogue(|mut out| async move {
        let items = vec![r#"{"id":"a1","claimed":false}"#; 5000].join(",");
        let line = format!("{{\"seq\":1,\"taken\":[{items}]}}\n");
        let _ = out.write_all(line.as_bytes()).await;
        std::future::pending::<()>().await;
    });
    let err = t.take(small_take()).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Session(why) if why.contains("more than")),
        "{err}"
    );
    assert!(t.take(small_take()).await.is_err());
    assert_eq!(starts.load(Ordering::Relaxed), 2, "each failure reopens");
}

#[tokio::test]
async fn a_put_reply_longer_than_its_items_allow_is_refused() {
    let (t, _) = rogue(|mut out| async move {
        let error = "x".repeat(4 << 20);
        let line = format!(
            "{{\"seq\":1,\"put\":[{{\"id\":\"a1\",\"result\":\"failed\",\"error\":\"{error}\"}}]}}\n"
        );
        let _ = out.write_all(line.as_bytes()).await;
        std::future::pending::<()>().await;
    });
    let put = PutItem {
        id: "a1".into(),
        file: b"{}".to_vec(),
    };
    let err = t.deliver(vec![put]).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Session(why) if why.contains("longer than")),
        "{err}"
    );
}

#[tokio::test]
async fn an_honest_gateway_splits_a_flood_of_requests_into_replies_the_host_accepts() {
    let dir = queue_dir();
    for i in 0..1100 {
        write_request(dir.path(), &format!("f{i:04}"), "{}");
    }
    let runner = MemoryRunner::new().with_queue_ops();
    let t = StreamTransport::new(
        Arc::new(runner),
        dir.path().to_path_buf(),
        PathBuf::from("gateway"),
        Duration::from_secs(10),
    );
    let first = t.take(take_opts()).await.unwrap();
    assert_eq!(first.len(), 1024, "one reply's worth");
    let rest = t.take(take_opts()).await.unwrap();
    assert_eq!(rest.len(), 76);
    assert_eq!(t.exec_count(), 1, "no failure, no new session");
}
