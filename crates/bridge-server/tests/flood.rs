//! The gateway under a flood (anything in the sandbox may open connections): past the
//! connection cap, idle connections make room and busy ones mean a prompt 503; slow heads
//! and idle keep-alives are dropped after the header timeout; an honest call is answered
//! promptly throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// How long an honest call may take while the flood goes on (not a time-out).
const PROMPT: Duration = Duration::from_secs(3);

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads until the gateway closes `stream`; how long that took and what it said.
fn until_closed(stream: &mut TcpStream) -> (Duration, String) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let _ = stream.read_to_end(&mut seen);
    (
        started.elapsed(),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

#[test]
fn more_idle_connections_than_the_cap_and_the_fds_cannot_keep_an_honest_call_out() {
    // 128 descriptors: without a cap, the flood would leave none for the honest call.
    let env = [("PAPERCLIP_BRIDGE_MAX_CONNECTIONS", "32")];
    let gateway = Gateway::start_with(&env, Some(128));
    let _host = Host::start(gateway.queue(), echo);
    let mut flood = Vec::new();
    for i in 0..200 {
        let mut stream = connect(gateway.port);
        if i % 2 == 0 {
            // Half of them start a head and never finish it.
            let _ = stream.write_all(b"GET /api/agents/me HTTP/1.1\r\nhost: x\r\n");
        }
        flood.push(stream);
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let reply = gateway.call("GET", "/api/agents/me", &[], b"");
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() < PROMPT,
        "the honest call took {:?}",
        started.elapsed()
    );
    assert!(
        !gateway.log().contains("Too many open files"),
        "{}",
        gateway.log()
    );
}

#[test]
fn when_every_connection_is_busy_a_new_one_is_refused_at_once() {
    let env = [
        ("PAPERCLIP_BRIDGE_MAX_CONNECTIONS", "4"),
        ("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "20000"),
    ];
    let gateway = Gateway::start(&env);
    let host = Host::start(gateway.queue(), |_| None); // a host that never answers
    let head =
        format!("GET /api/agents/me HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
    let _busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = connect(gateway.port);
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    eventually("four calls in flight", Duration::from_secs(10), || {
        host.seen().len() == 4
    });
    let started = Instant::now();
    let reply = gateway.call("GET", "/api/agents/me", &[], b"");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "too many connections");
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
}

#[test]
fn a_head_sent_slowly_is_cut_off_at_the_header_timeout() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_HEADER_TIMEOUT_MS", "1000")]);
    let mut stream = connect(gateway.port);
    stream
        .write_all(b"GET /api/agents/me HTTP/1.1\r\nx-slow: ")
        .unwrap();
    let mut trickle = stream.try_clone().unwrap();
    // One byte every 100 ms: always sending, never finishing.
    std::thread::spawn(move || {
        while trickle.write_all(b"a").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (took, said) = until_closed(&mut stream);
    assert!(took < PROMPT, "still open after {took:?}");
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_HEADER_TIMEOUT_MS", "1000")]);
    let _host = Host::start(gateway.queue(), echo);
    let mut stream = connect(gateway.port);
    let head =
        format!("GET /api/agents/me HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let (took, said) = until_closed(&mut stream);
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(
        took < PROMPT,
        "an idle keep-alive still open after {took:?}"
    );
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_HEADER_TIMEOUT_MS", "1000")]);
    let mut stream = connect(gateway.port);
    let (took, _) = until_closed(&mut stream);
    assert!(took < PROMPT, "still open after {took:?}");
}
