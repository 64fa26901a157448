//! The worker over the shared-directory transport, fed hand-written queue_v1 files (as
//! any queue_v1 gateway writes them), against a recording test double of the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bridge_host::policy::HostPolicy;
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::BoxFuture;
use bridge_host::transport::{
    Delivery, Incoming, Outgoing, SharedFsTransport, TakeOptions, Transport, TransportError,
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

fn start(queue: &Path, recorder: &Recorder, config: WorkerConfig) -> WorkerHandle {
    start_on(
        Arc::new(SharedFsTransport::new(queue.to_path_buf())),
        recorder,
        config,
    )
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
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Incoming>, TransportError>> {
        if self.fail_now() {
            return Box::pin(async { Err(TransportError::TimedOut(Duration::from_millis(1))) });
        }
        self.inner.take(opts)
    }

    fn deliver(
        &self,
        responses: Vec<Outgoing>,
    ) -> BoxFuture<'_, Result<Vec<(String, Delivery)>, TransportError>> {
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

#[tokio::test]
async fn failing_execs_lose_nothing_and_forward_nothing_twice() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let flaky = Arc::new(Flaky {
        inner: SharedFsTransport::new(dir.path().to_path_buf()),
        calls: AtomicU64::new(0),
    });
    let worker = start_on(flaky.clone(), &recorder, config());
    for i in 0..20 {
        let id = format!("f{i}");
        write_request(
            dir.path(),
            &id,
            &request_json(
                &id,
                "POST",
                &format!("/api/issues/i{i}/comments"),
                "{}",
                r#""{}""#,
            ),
        );
    }
    for i in 0..20 {
        assert_eq!(response(dir.path(), &format!("f{i}")).await.status, 201);
    }
    for i in 0..20 {
        assert_eq!(
            recorder.count("POST", &format!("/api/issues/i{i}/comments")),
            1
        );
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.count("PATCH", "/api/issues/i1") == 0 {
        assert!(
            Instant::now() < deadline,
            "the first worker never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
async fn stop_answers_everything_still_queued_with_503() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let held = recorder.hold.clone().write_owned().await;
    let worker = start(
        dir.path(),
        &recorder,
        WorkerConfig {
            concurrency: 1,
            ..config()
        },
    );
    for i in 0..3 {
        let id = format!("s{i}");
        write_request(
            dir.path(),
            &id,
            &request_json(&id, "GET", &format!("/api/issues/s{i}"), "{}", r#""""#),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.seen().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    let worker = start(
        dir.path(),
        &recorder,
        WorkerConfig {
            concurrency: 4,
            ..config()
        },
    );
    for i in 0..8 {
        let id = format!("k{i}");
        write_request(
            dir.path(),
            &id,
            &request_json(&id, "GET", &format!("/api/issues/k{i}"), "{}", r#""""#),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.max_in_flight.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "never reached 4 at once");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
        Arc::new(SharedFsTransport::new(dir.path().to_path_buf())),
        upstream,
        Arc::new(HostPolicy::default()),
        config(),
    );
    write_request(
        dir.path(),
        "n1",
        &request_json("n1", "POST", "/api/issues/i/comments", "{}", r#""{}""#),
    );
    let answer = response(dir.path(), "n1").await;
    assert_eq!(answer.status, 502);
    assert!(!answer.headers.contains_key("x-paperclip-bridge-outcome"));
    worker.stop().await;
}

/// Twelve POSTs, one at a time (so lost takes and lost delivers both happen): each is
/// answered 201 and reaches the upstream exactly once.
async fn posts_one_at_a_time_are_each_forwarded_once(queue: &Path, recorder: &Recorder, tag: &str) {
    for i in 0..12 {
        let id = format!("{tag}{i}");
        let path = format!("/api/issues/{id}/comments");
        write_request(
            queue,
            &id,
            &request_json(&id, "POST", &path, "{}", r#""{}""#),
        );
        assert_eq!(response(queue, &id).await.status, 201, "{id}");
        std::fs::remove_file(queue.join(format!("responses/{id}.json"))).unwrap();
    }
    for i in 0..12 {
        let path = format!("/api/issues/{tag}{i}/comments");
        assert_eq!(recorder.count("POST", &path), 1, "{path}");
    }
}

/// Runs every exec, but loses the result of every third one (reports a time-out), like an
/// exec channel that drops after the command ran: the worst case for claims.
#[derive(Debug)]
struct LossyRunner {
    calls: AtomicU64,
}

impl bridge_host::runner::Runner for LossyRunner {
    fn exec(
        &self,
        exec: bridge_host::runner::Exec,
    ) -> BoxFuture<'_, Result<bridge_host::runner::ExecOutput, bridge_host::runner::RunnerError>>
    {
        Box::pin(async move {
            let out = bridge_host::runner::LocalRunner.exec(exec).await?;
            if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
                return Ok(bridge_host::runner::ExecOutput {
                    timed_out: true,
                    ..Default::default()
                });
            }
            Ok(out)
        })
    }

    fn stream(
        &self,
        _: bridge_host::runner::Spawn,
    ) -> BoxFuture<'_, Result<bridge_host::runner::ExecStream, bridge_host::runner::RunnerError>>
    {
        Box::pin(async { Err(bridge_host::runner::RunnerError::NoStreaming) })
    }

    fn capabilities(&self) -> bridge_host::runner::Capabilities {
        bridge_host::runner::Capabilities::default()
    }
}

#[tokio::test]
async fn execs_whose_results_are_lost_lose_no_request() {
    use bridge_host::runner::Runner as _;
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let runner = Arc::new(LossyRunner {
        calls: AtomicU64::new(0),
    });
    let transport = Arc::new(bridge_host::transport::PosixTransport::new(
        runner.clone(),
        dir.path().to_path_buf(),
        Duration::from_secs(10),
    ));
    let worker = start_on(transport, &recorder, config());
    posts_one_at_a_time_are_each_forwarded_once(dir.path(), &recorder, "l").await;
    assert!(runner.calls.load(Ordering::SeqCst) >= 24);
    let _ = runner.capabilities();
    worker.stop().await;
}

/// Streams that break off after every third reply: the session did the work, but its reply
/// is lost and the stream ends, as a provider's streaming exec that drops would.
#[derive(Debug)]
struct BreakingStreams {
    replies: Arc<AtomicU64>,
}

impl bridge_host::runner::Runner for BreakingStreams {
    fn exec(
        &self,
        exec: bridge_host::runner::Exec,
    ) -> BoxFuture<'_, Result<bridge_host::runner::ExecOutput, bridge_host::runner::RunnerError>>
    {
        bridge_host::runner::LocalRunner.exec(exec)
    }

    fn stream(
        &self,
        spawn: bridge_host::runner::Spawn,
    ) -> BoxFuture<'_, Result<bridge_host::runner::ExecStream, bridge_host::runner::RunnerError>>
    {
        Box::pin(async move {
            use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
            let mut stream = bridge_host::runner::LocalRunner.stream(spawn).await?;
            let (mut relay, ours) = tokio::io::duplex(1 << 20);
            let theirs = std::mem::replace(&mut stream.stdout, Box::pin(ours));
            let replies = self.replies.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(theirs).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let hello = line.starts_with(r#"{"session""#);
                    if !hello && replies.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
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
            });
            Ok(stream)
        })
    }

    fn capabilities(&self) -> bridge_host::runner::Capabilities {
        bridge_host::runner::Capabilities {
            streaming: true,
            shared_fs: false,
        }
    }
}

#[tokio::test]
async fn streams_that_break_off_lose_no_request() {
    let recorder = Recorder::start().await;
    let dir = queue_dir();
    let replies = Arc::new(AtomicU64::new(0));
    let runner = Arc::new(BreakingStreams {
        replies: replies.clone(),
    });
    let transport = Arc::new(bridge_host::transport::StreamTransport::new(
        runner,
        dir.path().to_path_buf(),
        gateway_bin(),
        Duration::from_secs(10),
    ));
    let worker = start_on(transport, &recorder, config());
    posts_one_at_a_time_are_each_forwarded_once(dir.path(), &recorder, "s").await;
    assert!(replies.load(Ordering::SeqCst) >= 24);
    assert!(worker.exec_count() >= 8, "a new session after each break");
    worker.stop().await;
}
