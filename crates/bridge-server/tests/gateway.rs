//! The real gateway binary against a harness that plays the queue_v1 host, for what needs
//! the process or a socket: `ready.json`, many concurrent connections, SIGTERM, exit
//! codes, file modes and a caller hanging up, hyper's head size and time limits. HTTP
//! behaviour that needs neither is tested in process (tests/in_process.rs).

// Test helpers (tests/common) are not #[test] functions, so clippy's in-test allowance
// does not reach them; a failed helper step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

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
