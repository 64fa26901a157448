//! The worker over the shared-directory transport, fed hand-written queue_v1 files (as
//! any queue_v1 gateway writes them), against a recording test double of the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bridge_host::audit::AuditLog;
use bridge_host::policy::HostPolicy;
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, LocalRunner, Runner, RunnerError, Spawn,
};
use bridge_host::transport::{
    Deliveries, Delivery, PosixTransport, PutItem, SharedFsTransport, StreamTransport, TakeOptions,
    Taken, Transport, TransportError,
};
use bridge_host::worker::{Worker, WorkerConfig, WorkerHandle};
use common::*;

fn upstream(recorder: &Recorder) -> Upstream {
    Upstream::new(
        &recorder.url,
        Secret::new(REAL_KEY.into()),
        Some(RUN_ID.into()),
        Duration::from_secs(10),
    )
    .unwrap()
}

fn config() -> WorkerConfig {
    WorkerConfig {
        take_wait: Duration::from_millis(200),
        retry_start: Duration::from_millis(10),
        retry_cap: Duration::from_millis(100),
        drain_timeout: Duration::from_millis(300),
        ..WorkerConfig::default()
    }
}

/// [`config`], forwarding at most `concurrency` requests at once.
fn with_concurrency(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        ..config()
    }
}

fn shared_fs(queue: &Path) -> Arc<dyn Transport> {
    Arc::new(SharedFsTransport::new(queue.to_path_buf()))
}

fn start(queue: &Path, recorder: &Recorder, config: WorkerConfig) -> WorkerHandle {
    start_on(shared_fs(queue), recorder, config)
}

fn start_on(
    transport: Arc<dyn Transport>,
    recorder: &Recorder,
    config: WorkerConfig,
) -> WorkerHandle {
    Worker::spawn(
        transport,
        upstream(recorder),
        Arc::new(HostPolicy::default()),
        config,
    )
}

/// Queues a GET of `path` with id `id` and no headers.
fn write_get(queue: &Path, id: &str, path: &str) {
    write_request(queue, id, &request_json(id, "GET", path, "{}", r#""""#));
}

/// Queues `count` GETs, `{tag}0`, `{tag}1`, …, each of the issue named like it.
fn write_gets(queue: &Path, tag: &str, count: usize) {
    for i in 0..count {
        let id = format!("{tag}{i}");
        write_get(queue, &id, &format!("/api/issues/{id}"));
    }
}

/// Queues a POST of an empty JSON comment on `issue`, with id `id`; returns the path.
fn write_comment(queue: &Path, id: &str, issue: &str) -> String {
    let path = format!("/api/issues/{issue}/comments");
    write_request(queue, id, &request_json(id, "POST", &path, "{}", r#""{}""#));
    path
}

/// Waits (ten seconds at most, else fails saying `what` never happened) until `done`.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn hand_written_requests_are_forwarded_with_the_real_credential_only() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let worker = start(dir.path(), &recorder, config());
    let headers = r#"{"accept":"application/json","authorization":"Bearer bridge-token","host":"evil.example","x-paperclip-run-id":"forged","x-custom":"1"}"#;
    write_request(
        dir.path(),
        "r1",
        &request_json("r1", "GET", "/api/agents/me", headers, r#""""#),
    );
    let answer = response(dir.path(), "r1").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["etag"], "\"e-1\"");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {REAL_KEY}").as_str())
    );
    assert_eq!(s.header("x-paperclip-run-id"), Some(RUN_ID));
    assert_eq!(s.header("accept"), Some("application/json"));
    assert!(s.header("x-custom").is_none());
    assert!(
        recorder.url.ends_with(s.header("host").unwrap()),
        "host chosen by the request"
    );
    worker.stop().await;
}

#[tokio::test]
async fn status_location_etag_and_binary_bodies_travel_both_ways() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let worker = start(dir.path(), &recorder, config());
    write_request(
        dir.path(),
        "c1",
        &request_json(
            "c1",
            "POST",
            "/api/issues/i1/comments",
            r#"{"content-type":"application/json"}"#,
            r#""{\"body\":\"hi\"}""#,
        ),
    );
    let upload = base64::engine::general_purpose::STANDARD.encode(binary_blob());
    let json = request_json(
        "u1",
        "POST",
        "/api/companies/c/issues/i1/attachments",
        r#"{"content-type":"multipart/form-data; boundary=x"}"#,
        &format!(r#""{upload}","bodyEncoding":"base64""#),
    );
    write_request(dir.path(), "u1", &json);
    write_request(
        dir.path(),
        "d1",
        &request_json("d1", "GET", "/api/attachments/bin/content", "{}", r#""""#),
    );
    let comment = response(dir.path(), "c1").await;
    assert_eq!(comment.status, 201);
    assert_eq!(comment.headers["location"], "/api/issues/i1/comments/c-1");
    assert_eq!(comment.headers["etag"], "\"c-1\"");
    assert!(!comment.headers.contains_key("x-internal-upstream"));
    assert_eq!(comment.body_bytes(1 << 20).unwrap(), br#"{"id":"c-1"}"#);
    let uploaded = response(dir.path(), "u1").await;
    assert_eq!(
        uploaded.body_bytes(1 << 20).unwrap(),
        binary_blob(),
        "upload came back byte-exact"
    );
    let seen = recorder.seen();
    let upload_seen = seen
        .iter()
        .find(|s| s.path.ends_with("/attachments"))
        .unwrap();
    assert_eq!(
        upload_seen.body,
        binary_blob(),
        "upstream got the upload byte-exact"
    );
    let download = response(dir.path(), "d1").await;
    assert_eq!(download.body_bytes(1 << 20).unwrap(), binary_blob());
    assert!(download.headers["content-disposition"].contains("a.bin"));
    worker.stop().await;
}

#[tokio::test]
async fn forged_files_get_their_errors_and_never_reach_the_upstream() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let policy = HostPolicy {
        max_body_bytes: 1024,
        ..HostPolicy::default()
    };
    let worker = Worker::spawn(
        Arc::new(SharedFsTransport::new(dir.path().to_path_buf())),
        upstream(&recorder),
        Arc::new(policy),
        config(),
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "dots",
            request_json("dots", "GET", "/api/companies/../agents", "{}", r#""""#),
            400,
            "'.' or '..'",
        ),
        (
            "enc",
            request_json("enc", "GET", "/api/issues/a%2fb", "{}", r#""""#),
            400,
            "%2F",
        ),
        (
            "nul",
            request_json("nul", "GET", "/api/issues/a\\u0000b", "{}", r#""""#),
            400,
            "NUL",
        ),
        ("json", "{not json".into(), 400, "invalid request file"),
        (
            "b64",
            request_json(
                "b64",
                "POST",
                "/api/issues/i/comments",
                "{}",
                r#""e30","bodyEncoding":"base64""#,
            ),
            400,
            "base64",
        ),
        (
            "route",
            request_json("route", "GET", "/api/companies", "{}", r#""""#),
            403,
            "Route not allowed: GET /api/companies",
        ),
        (
            "delete",
            request_json("delete", "DELETE", "/api/issues/i1", "{}", r#""""#),
            403,
            "Route not allowed",
        ),
        (
            "idmix",
            request_json("other", "GET", "/api/agents/me", "{}", r#""""#),
            400,
            "does not match",
        ),
        (
            "big",
            request_json(
                "big",
                "POST",
                "/api/issues/i/comments",
                "{}",
                &format!("\"{}\"", "x".repeat(8000)),
            ),
            413,
            "over the limit",
        ),
    ];
    for (id, json, _, _) in &cases {
        write_request(dir.path(), id, json);
    }
    for (id, _, status, says) in &cases {
        let answer = response(dir.path(), id).await;
        let body = String::from_utf8(answer.body_bytes(1 << 20).unwrap()).unwrap();
        assert_eq!(answer.status, *status, "{id}: {body}");
        assert!(body.contains(says), "{id}: {body}");
    }
    assert!(recorder.seen().is_empty(), "{:?}", recorder.seen());
    worker.stop().await;
}

/// Fails every other call, like a flaky exec channel.
#[derive(Debug)]
struct Flaky {
    inner: SharedFsTransport,
    calls: AtomicU64,
}

impl Flaky {
    fn fail_now(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst) % 2 == 0
    }
}

impl Transport for Flaky {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>> {
        if self.fail_now() {
            return Box::pin(async { Err(TransportError::TimedOut(Duration::from_millis(1))) });
        }
        self.inner.take(opts)
    }

    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_> {
        if self.fail_now() {
            return Box::pin(async {
                Err(TransportError::Failed {
                    code: Some(1),
                    stderr: "injected".into(),
                })
            });
        }
        self.inner.deliver(responses)
    }

    fn exec_count(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A transport whose sandbox lies: its first take returns `taken` as they are (however
/// large), later ones nothing; deliveries are kept for the test.
#[derive(Debug)]
struct Lying {
    taken: std::sync::Mutex<Vec<Taken>>,
    delivered: std::sync::Mutex<Vec<PutItem>>,
}

impl Transport for Lying {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>> {
        let batch = std::mem::take(&mut *self.taken.lock().unwrap());
        Box::pin(async move {
            if batch.is_empty() {
                tokio::time::sleep(opts.wait).await;
            }
            Ok(batch)
        })
    }

    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_> {
        let results = responses
            .iter()
            .map(|r| (r.id.clone(), Ok(Delivery::Delivered)))
            .collect();
        self.delivered.lock().unwrap().extend(responses);
        Box::pin(async move { Ok(results) })
    }

    fn exec_count(&self) -> u64 {
        0
    }
}

#[tokio::test]
async fn files_over_the_envelope_are_413_on_any_transport_even_when_claimed_before() {
    let recorder = Recorder::start().await;
    let policy = HostPolicy {
        max_body_bytes: 16,
        ..HostPolicy::default()
    };
    let envelope = bridge_protocol::codec::envelope_limit(policy.max_body_bytes);
    let big = |id: &str, method: &str| {
        let body = format!(r#""{}""#, "a".repeat(envelope));
        request_json(id, method, "/api/issues/i1", "{}", &body).into_bytes()
    };
    let taken = |id: &str, method: &str, claimed: bool| Taken {
        id: id.into(),
        file: Ok(big(id, method)),
        previously_claimed: claimed,
    };
    let lying = Arc::new(Lying {
        taken: std::sync::Mutex::new(vec![
            taken("fresh", "PATCH", false),
            taken("claimed", "PATCH", true),
        ]),
        delivered: std::sync::Mutex::new(Vec::new()),
    });
    let worker = Worker::spawn(
        lying.clone(),
        upstream(&recorder),
        Arc::new(policy),
        config(),
    );
    wait_until("both answered", || {
        lying.delivered.lock().unwrap().len() == 2
    })
    .await;
    worker.stop().await;
    for put in lying.delivered.lock().unwrap().iter() {
        let answer: bridge_protocol::ResponseFile = serde_json::from_slice(&put.file).unwrap();
        assert_eq!(answer.status, 413, "{}", put.id);
    }
    assert!(
        recorder.seen().is_empty(),
        "nothing over the limit is forwarded"
    );
}

#[tokio::test]
async fn failing_execs_lose_nothing_and_forward_nothing_twice() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let flaky = Arc::new(Flaky {
        inner: SharedFsTransport::new(dir.path().to_path_buf()),
        calls: AtomicU64::new(0),
    });
    let worker = start_on(flaky.clone(), &recorder, config());
    let paths: Vec<String> = (0..20)
        .map(|i| write_comment(dir.path(), &format!("f{i}"), &format!("i{i}")))
        .collect();
    for i in 0..20 {
        assert_eq!(response(dir.path(), &format!("f{i}")).await.status, 201);
    }
    for path in &paths {
        assert_eq!(recorder.count("POST", path), 1);
    }
    assert!(
        worker.stats().transport_errors.load(Ordering::SeqCst) > 0,
        "failures were injected"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_restarted_worker_never_resends_an_unsafe_request() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let held = recorder.hold.clone().write_owned().await;
    let first = start(dir.path(), &recorder, config());
    write_request(
        dir.path(),
        "p1",
        &request_json(
            "p1",
            "PATCH",
            "/api/issues/i1",
            "{}",
            r#""{\"status\":\"done\"}""#,
        ),
    );
    wait_until("the first worker never forwarded", || {
        recorder.count("PATCH", "/api/issues/i1") > 0
    })
    .await;
    first.abort(); // a crash mid-request
    drop(held);
    let second = start(dir.path(), &recorder, config());
    let answer = response(dir.path(), "p1").await;
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.headers["x-paperclip-bridge-outcome"],
        "indeterminate"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        recorder.count("PATCH", "/api/issues/i1"),
        1,
        "forwarded exactly once"
    );
    second.stop().await;
}

#[tokio::test]
async fn an_answer_the_sandbox_blocks_holds_back_no_other_answer() {
    let dir = queue_dir();
    // A directory where b1's answer must go: that one put fails until it is removed.
    let blocker = dir.path().join("responses/b1.json.tmp");
    std::fs::create_dir_all(blocker.join("keep")).unwrap();
    let recorder = Recorder::start().await;
    let held = recorder.hold.write().await;
    let worker = start(dir.path(), &recorder, config());
    for id in ["a1", "b1", "c1"] {
        write_get(dir.path(), id, &format!("/api/issues/{id}"));
    }
    // Held upstream, then released at once: the three answers travel in one batch.
    wait_until("three calls in flight", || recorder.seen().len() == 3).await;
    drop(held);
    for id in ["a1", "c1"] {
        assert_eq!(response(dir.path(), id).await.status, 200, "{id}");
    }
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(response(dir.path(), "b1").await.status, 200);
    wait_until("three answers recorded", || {
        worker.stats().delivered.load(Ordering::Relaxed) == 3
    })
    .await;
    // Retrying the batch as a whole would have put a1 and c1 again, to callers "gone".
    assert_eq!(worker.stats().caller_gone.load(Ordering::Relaxed), 0);
    worker.stop().await;
}

#[tokio::test]
async fn stop_answers_everything_still_queued_with_503() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let held = recorder.hold.clone().write_owned().await;
    let worker = start(dir.path(), &recorder, with_concurrency(1));
    write_gets(dir.path(), "s", 3);
    wait_until("nothing was forwarded", || !recorder.seen().is_empty()).await;
    tokio::time::timeout(Duration::from_secs(10), worker.stop())
        .await
        .expect("stop is bounded");
    for i in 0..3 {
        let answer = response(dir.path(), &format!("s{i}")).await;
        assert_eq!(answer.status, 503, "s{i}");
    }
    drop(held);
    let claims: Vec<_> = std::fs::read_dir(dir.path().join("requests"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".claimed"))
        .collect();
    assert!(claims.is_empty(), "claims left behind: {claims:?}");
}

#[tokio::test]
async fn requests_are_forwarded_concurrently_up_to_the_limit() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let held = recorder.hold.clone().write_owned().await;
    let worker = start(dir.path(), &recorder, with_concurrency(4));
    write_gets(dir.path(), "k", 8);
    wait_until("never reached 4 at once", || {
        recorder.max_in_flight.load(Ordering::SeqCst) >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        recorder.max_in_flight.load(Ordering::SeqCst),
        4,
        "never more than the limit"
    );
    drop(held);
    for i in 0..8 {
        assert_eq!(response(dir.path(), &format!("k{i}")).await.status, 200);
    }
    worker.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_before_sending_and_retryable() {
    let dir = queue_dir();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let upstream = Upstream::new(
        &url,
        Secret::new(REAL_KEY.into()),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let worker = Worker::spawn(
        shared_fs(dir.path()),
        upstream,
        Arc::new(HostPolicy::default()),
        config(),
    );
    write_comment(dir.path(), "n1", "i");
    let answer = response(dir.path(), "n1").await;
    assert_eq!(answer.status, 502);
    assert!(!answer.headers.contains_key("x-paperclip-bridge-outcome"));
    worker.stop().await;
}

/// What the audit log says about one request, up to its latency (which varies).
fn audit_line_start(id: &str, method: &str, path: &str, decision: &str, statuses: &str) -> String {
    format!(
        r#","id":"{id}","method":"{method}","path":"{path}","decision":"{decision}",{statuses},"latency_ms":"#
    )
}

#[tokio::test]
async fn every_answer_is_audited_with_its_decision() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("audit.jsonl");
    let audit = Some(AuditLog::open(&log).unwrap());
    let worker = start(dir.path(), &recorder, WorkerConfig { audit, ..config() });
    // One at a time, so the log's order is the order written.
    write_get(dir.path(), "a1", "/api/agents/me");
    response(dir.path(), "a1").await;
    write_get(dir.path(), "a2", "/api/companies");
    response(dir.path(), "a2").await;
    write_request(dir.path(), "a3", "{not json");
    response(dir.path(), "a3").await;
    worker.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        audit_line_start(
            "a1",
            "GET",
            "/api/agents/me",
            "forwarded",
            r#""status":200,"upstream_status":200"#,
        ),
        audit_line_start(
            "a2",
            "GET",
            "/api/companies",
            "denied",
            r#""status":403,"upstream_status":null"#,
        ),
        audit_line_start(
            "a3",
            "-",
            "-",
            "invalid",
            r#""status":400,"upstream_status":null"#,
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (line, start) in lines.iter().zip(&expected) {
        assert!(line.starts_with(r#"{"time":""#), "{line}");
        assert!(line.ends_with('}'), "{line}");
        assert!(line.contains(start.as_str()), "{line} lacks {start}");
    }
}

/// Twelve POSTs, one at a time (so lost takes and lost delivers both happen): each is
/// answered 201 and reaches the upstream exactly once.
async fn posts_one_at_a_time_are_each_forwarded_once(queue: &Path, recorder: &Recorder, tag: &str) {
    let mut paths = Vec::new();
    for i in 0..12 {
        let id = format!("{tag}{i}");
        paths.push(write_comment(queue, &id, &id));
        assert_eq!(response(queue, &id).await.status, 201, "{id}");
        std::fs::remove_file(queue.join(format!("responses/{id}.json"))).unwrap();
    }
    for path in &paths {
        assert_eq!(recorder.count("POST", path), 1, "{path}");
    }
}

/// Which results a [`Lossy`] runner loses: every third one of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Every exec runs, but every third one's result is lost (reported as a time-out),
    /// like an exec channel that drops after the command ran: the worst case for claims.
    ExecResults,
    /// Streams break off after every third reply: the session did the work, but its reply
    /// is lost and the stream ends, as a provider's streaming exec that drops would.
    StreamReplies,
}

/// The local runner, losing results as its [`Loss`] says.
#[derive(Debug)]
struct Lossy {
    loss: Loss,
    /// Results of the lossy kind seen so far (execs or stream replies).
    seen: Arc<AtomicU64>,
}

impl Lossy {
    fn new(loss: Loss) -> Arc<Self> {
        Arc::new(Self {
            loss,
            seen: Arc::default(),
        })
    }
}

/// Counts one more result; whether it is the one in three that is lost.
fn lose_this_one(seen: &AtomicU64) -> bool {
    seen.fetch_add(1, Ordering::SeqCst) % 3 == 2
}

impl Runner for Lossy {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            let out = LocalRunner.exec(exec).await?;
            if self.loss == Loss::ExecResults && lose_this_one(&self.seen) {
                return Ok(ExecOutput {
                    timed_out: true,
                    ..Default::default()
                });
            }
            Ok(out)
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            if self.loss != Loss::StreamReplies {
                return Err(RunnerError::NoStreaming);
            }
            let mut stream = LocalRunner.stream(spawn).await?;
            let (relay, ours) = tokio::io::duplex(1 << 20);
            let theirs = std::mem::replace(&mut stream.stdout, Box::pin(ours));
            tokio::spawn(relay_losing_replies(theirs, relay, self.seen.clone()));
            Ok(stream)
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: self.loss == Loss::StreamReplies,
            shared_fs: false,
            upload: false,
        }
    }
}

/// Relays the session's lines until the third reply, which is lost with the stream.
async fn relay_losing_replies(
    theirs: impl tokio::io::AsyncRead + Unpin,
    mut relay: tokio::io::DuplexStream,
    seen: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut lines = tokio::io::BufReader::new(theirs).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let hello = line.starts_with(r#"{"session""#);
        if !hello && lose_this_one(&seen) {
            return; // the reply is lost and the stream ends
        }
        if relay
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn execs_whose_results_are_lost_lose_no_request() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let runner = Lossy::new(Loss::ExecResults);
    let transport = Arc::new(PosixTransport::new(
        runner.clone(),
        dir.path().to_path_buf(),
        Duration::from_secs(10),
    ));
    let worker = start_on(transport, &recorder, config());
    posts_one_at_a_time_are_each_forwarded_once(dir.path(), &recorder, "l").await;
    assert!(runner.seen.load(Ordering::SeqCst) >= 24);
    worker.stop().await;
}

#[tokio::test]
async fn streams_that_break_off_lose_no_request() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let runner = Lossy::new(Loss::StreamReplies);
    let transport = Arc::new(StreamTransport::new(
        runner.clone(),
        dir.path().to_path_buf(),
        gateway_bin(),
        Duration::from_secs(10),
    ));
    let worker = start_on(transport, &recorder, config());
    posts_one_at_a_time_are_each_forwarded_once(dir.path(), &recorder, "s").await;
    assert!(runner.seen.load(Ordering::SeqCst) >= 24);
    assert!(worker.exec_count() >= 8, "a new session after each break");
    worker.stop().await;
}
