//! The real gateway binary against a harness that plays the queue_v1 host: one test per
//! status, concurrency, late answers, the stale sweep, SIGTERM and start-up failures.

// Test helpers (tests/common) are not #[test] functions, so clippy's in-test allowance
// does not reach them; a failed helper step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bridge_protocol::wire::{Headers, ResponseFile};
use common::*;

fn response(id: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) -> ResponseFile {
    let headers: Headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ResponseFile::new(id, status, headers, body, "2026-11-28T00:00:00.000Z".into())
}

#[test]
fn ready_json_has_the_real_port() {
    let gateway = Gateway::start(&[]);
    let text = std::fs::read_to_string(gateway.queue().join("ready.json")).unwrap();
    let ready: bridge_protocol::ReadyFile = serde_json::from_str(&text).unwrap();
    assert_ne!(ready.port, 0);
    assert_eq!(ready.base_url, format!("http://127.0.0.1:{}", ready.port));
    assert_eq!(ready.pid, gateway.child.id());
    assert!(text.ends_with('\n'));
}

#[test]
fn missing_or_wrong_token_is_401_and_nothing_is_queued() {
    let gateway = Gateway::start(&[]);
    let host = Host::start(gateway.queue(), echo);
    let none = gateway.request("GET", "/api/agents/me", &[], b"");
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].is_string());
    let wrong = gateway.request(
        "GET",
        "/api/agents/me",
        &[("authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(wrong.status, 401);
    std::thread::sleep(Duration::from_millis(50));
    assert!(host.seen().is_empty());
}

#[test]
fn answers_pass_through_with_status_headers_and_exact_bytes() {
    let gateway = Gateway::start(&[]);
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let reply_bytes = binary.clone();
    let host = Host::start(gateway.queue(), move |req| {
        Some(response(
            &req.id,
            201,
            &[
                ("etag", "\"v7\""),
                ("location", "/api/issues/i1/comments/c1"),
                ("content-length", "1"),
                ("content-type", "application/octet-stream"),
            ],
            &reply_bytes,
        ))
    });
    let reply = gateway.call(
        "POST",
        "/api/issues/i1/comments?draft=1",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("x-secret-header", "must not travel"),
            ("if-match", "a"),
            ("if-match", "b"),
        ],
        br#"{"body":"hi"}"#,
    );
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("etag"), Some("\"v7\""));
    assert_eq!(reply.header("location"), Some("/api/issues/i1/comments/c1"));
    assert_eq!(reply.body, binary);
    assert_eq!(reply.header("content-length"), Some("256"));
    let seen = host.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/issues/i1/comments");
    assert_eq!(request.query, "?draft=1");
    assert_eq!(request.body, r#"{"body":"hi"}"#);
    assert_eq!(request.body_encoding, None);
    let names: Vec<&str> = request.headers.keys().map(String::as_str).collect();
    assert_eq!(names, ["accept", "content-type", "if-match"]);
    assert_eq!(request.headers["if-match"], "a, b");
    // The request file is gone once the caller has its answer.
    eventually("request file removed", Duration::from_secs(5), || {
        entries(&gateway.queue().join("requests")).is_empty()
    });
    assert!(entries(&gateway.queue().join("responses")).is_empty());
}

#[test]
fn non_json_bodies_are_415_but_bodyless_requests_need_no_type() {
    let gateway = Gateway::start(&[]);
    let host = Host::start(gateway.queue(), echo);
    let text = gateway.call(
        "POST",
        "/api/issues/i1/comments",
        &[("content-type", "text/plain")],
        b"hi",
    );
    assert_eq!(text.status, 415);
    let untyped = gateway.call("POST", "/api/issues/i1/comments", &[], b"hi");
    assert_eq!(untyped.status, 415);
    let bodyless = gateway.call("POST", "/api/issues/i1/checkout", &[], b"");
    assert_eq!(
        bodyless.status,
        200,
        "{}",
        String::from_utf8_lossy(&bodyless.body)
    );
    let delete = gateway.call("DELETE", "/api/routine-triggers/t1", &[], b"");
    assert_eq!(delete.status, 200);
    assert_eq!(host.seen().len(), 2);
}

#[test]
fn multipart_goes_base64_only_to_the_attachment_route() {
    let gateway = Gateway::start(&[]);
    let host = Host::start(gateway.queue(), echo);
    let form = b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n\x00\xff\r\n--XyZ--\r\n";
    let ct = [("content-type", "multipart/form-data; boundary=XyZ")];
    let ok = gateway.call("POST", "/api/companies/c1/issues/i1/attachments", &ct, form);
    assert_eq!(ok.status, 200);
    let seen = host.seen();
    assert_eq!(
        seen[0].body_encoding,
        Some(bridge_protocol::BodyEncoding::Base64)
    );
    assert_eq!(seen[0].body_bytes(1 << 20).unwrap(), form);
    let elsewhere = gateway.call("POST", "/api/issues/i1/comments", &ct, form);
    assert_eq!(elsewhere.status, 415);
}

#[test]
fn bodies_over_the_limit_are_413_before_anything_is_written() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "100")]);
    let host = Host::start(gateway.queue(), echo);
    let ct = [("content-type", "application/json")];
    let at_limit = format!("\"{}\"", "a".repeat(98));
    assert_eq!(
        gateway
            .call("POST", "/api/x", &ct, at_limit.as_bytes())
            .status,
        200
    );
    let over = format!("\"{}\"", "a".repeat(99));
    let reply = gateway.call("POST", "/api/x", &ct, over.as_bytes());
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("100"));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        host.seen().len(),
        1,
        "only the request at the limit was queued"
    );
}

#[test]
fn full_queue_is_503_until_stale_requests_are_swept() {
    let gateway = Gateway::start(&[
        ("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "1"),
        ("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "1000"),
    ]);
    let stuck = gateway.queue().join("requests/stuck-1.json");
    std::fs::write(&stuck, b"{}\n").unwrap();
    assert_eq!(gateway.call("GET", "/api/agents/me", &[], b"").status, 503);
    assert!(stuck.exists(), "a fresh request is not swept");
    // Age it past response timeout + 2 s: it is abandoned and swept.
    let old = std::time::SystemTime::now() - Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&stuck)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let host = Host::start(gateway.queue(), echo);
    assert_eq!(gateway.call("GET", "/api/agents/me", &[], b"").status, 200);
    assert!(!stuck.exists());
    drop(host);
}

#[test]
fn unsafe_request_timing_out_is_409_indeterminate_and_withdrawn() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "300")]);
    let ct = [("content-type", "application/json")];
    let reply = gateway.call("POST", "/api/issues/i1/comments", &ct, b"{}");
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    let body = reply.json();
    assert_eq!(body["outcome"], "indeterminate");
    assert_eq!(body["retryable"], false);
    assert!(entries(&gateway.queue().join("requests")).is_empty());
}

#[test]
fn safe_request_timing_out_is_504() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "300")]);
    let reply = gateway.call("GET", "/api/agents/me", &[], b"");
    assert_eq!(reply.status, 504);
    assert!(reply.header("x-paperclip-bridge-outcome").is_none());
    assert!(entries(&gateway.queue().join("requests")).is_empty());
}

#[test]
fn indeterminate_answer_from_the_host_becomes_409() {
    let gateway = Gateway::start(&[]);
    let _host = Host::start(gateway.queue(), |req| {
        Some(response(
            &req.id,
            504,
            &[("x-paperclip-bridge-outcome", "indeterminate")],
            b"{}",
        ))
    });
    let reply = gateway.call(
        "PATCH",
        "/api/issues/i1",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(reply.status, 409);
    assert_eq!(reply.json()["outcome"], "indeterminate");
}

#[test]
fn malformed_response_file_is_502() {
    let gateway = Gateway::start(&[]);
    let queue = gateway.queue();
    let _host = Host::start(queue.clone(), move |req| {
        let path = queue.join("responses").join(format!("{}.json", req.id));
        std::fs::write(path, b"{\"id\": broken").unwrap();
        None
    });
    let reply = gateway.call("GET", "/api/agents/me", &[], b"");
    assert_eq!(reply.status, 502);
    assert!(reply.json()["error"].is_string());
}

#[test]
fn sixty_four_concurrent_callers_each_get_their_own_answer() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "128")]);
    let _host = Host::start(gateway.queue(), echo);
    let port = gateway.port;
    let callers: Vec<_> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                let auth = format!("Bearer {TOKEN}");
                let reply = http(
                    port,
                    "GET",
                    &format!("/api/issues/i{i}"),
                    &[("authorization", &auth)],
                    b"",
                );
                (i, reply)
            })
        })
        .collect();
    for caller in callers {
        let (i, reply) = caller.join().unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["path"], format!("/api/issues/i{i}"));
    }
}

#[test]
fn a_late_answer_is_not_left_behind() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "200")]);
    let host = Host::start(gateway.queue(), |_| None);
    assert_eq!(gateway.call("GET", "/api/agents/me", &[], b"").status, 504);
    let id = host.seen()[0].id.clone();
    write_response(&gateway.queue(), &response(&id, 200, &[], b"late"));
    eventually("late response removed", Duration::from_secs(5), || {
        entries(&gateway.queue().join("responses")).is_empty()
    });
}

#[test]
fn an_answer_to_a_request_someone_else_wrote_is_left_for_them() {
    let gateway = Gateway::start(&[]);
    let queue = gateway.queue();
    std::fs::write(queue.join("requests/foreign-1.json"), b"{}\n").unwrap();
    write_response(&queue, &response("foreign-1", 400, &[], b"{}"));
    // Give the watcher (inotify, then the 1 s scan) every chance to act.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(queue.join("responses/foreign-1.json").exists());
}

#[test]
fn sigterm_lets_in_flight_callers_finish_then_exits_0() {
    let mut gateway = Gateway::start(&[]);
    let queue = gateway.queue();
    let port = gateway.port;
    let caller = std::thread::spawn(move || {
        let auth = format!("Bearer {TOKEN}");
        http(
            port,
            "GET",
            "/api/agents/me",
            &[("authorization", &auth)],
            b"",
        )
    });
    eventually("request queued", Duration::from_secs(5), || {
        !entries(&queue.join("requests")).is_empty()
    });
    gateway.terminate();
    std::thread::sleep(Duration::from_millis(200));
    // The host answers after the signal: the caller still gets it.
    let _host = Host::start(queue, echo);
    let reply = caller.join().unwrap();
    assert_eq!(reply.status, 200);
    let status = gateway.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
}

#[test]
fn cannot_bind_exits_1_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(dir.path(), &[("PAPERCLIP_BRIDGE_PORT", &port)]);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("cannot listen on 127.0.0.1:"), "{log}");
    assert!(!dir.path().join("queue/ready.json").exists());
}

#[test]
fn unknown_mode_and_bad_settings_exit_2_with_a_message() {
    for (name, value, says) in [
        ("PAPERCLIP_API_BRIDGE_MODE", "http_v9", "not implemented"),
        ("PAPERCLIP_BRIDGE_PORT", "nope", "PAPERCLIP_BRIDGE_PORT"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(dir.path(), &[(name, value)]);
        assert_eq!(wait(&mut child).code(), Some(2));
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
        assert!(log.contains(says), "{log}");
    }
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("the gateway did not exit");
}

#[test]
fn queue_files_are_owner_only_and_a_caller_who_leaves_withdraws_its_request() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "20000")]);
    let requests = gateway.queue().join("requests");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    let head = format!(
        "POST /api/issues/i1/comments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    stream.write_all(head.as_bytes()).unwrap();
    eventually("request published", Duration::from_secs(5), || {
        entries(&requests).len() == 1
    });
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let file = requests.join(&entries(&requests)[0]);
    assert_eq!(mode(&file), 0o600);
    for dir in ["", "requests", "responses", "logs"] {
        assert_eq!(mode(&gateway.queue().join(dir)), 0o700, "{dir}/");
    }
    assert_eq!(mode(&gateway.queue().join("ready.json")), 0o600);
    drop(stream);
    eventually("request withdrawn", Duration::from_secs(5), || {
        entries(&requests).is_empty()
    });
}

#[test]
fn a_huge_request_head_is_refused_and_the_gateway_lives_on() {
    use std::io::{Read as _, Write as _};
    let gateway = Gateway::start(&[]);
    let _host = Host::start(gateway.queue(), echo);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let huge = format!(
        "GET /api/agents/me HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = stream.write_all(huge.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "{head}"
    );
    assert_eq!(
        gateway.call("GET", "/api/agents/me", &[], b"").status,
        200,
        "still serving"
    );
}

#[test]
fn a_client_that_never_sends_its_head_is_cut_off() {
    use std::io::Read as _;
    let gateway = Gateway::start(&[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"GET /api/agents/me HTTP/1.1\r\n").unwrap();
    // The gateway closes the connection after its 10 s header read timeout; the read
    // returns (end of stream or a 408) well before our own 30 s bound.
    let mut buf = Vec::new();
    let result = stream.read_to_end(&mut buf);
    assert!(
        result.is_ok(),
        "the connection was never closed: {result:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
