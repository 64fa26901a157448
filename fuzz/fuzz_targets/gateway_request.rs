//! The gateway's HTTP edge (hyper's parser, our header, token and body handling) fed raw
//! bytes on a real socket: every request gets a well-formed HTTP answer or a closed
//! connection, never a success without a host, and every file it spools is valid
//! queue_v1 that the host's checker reads without panicking.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bridge_host::policy::HostPolicy;
use bridge_protocol::env::GatewayConfig;
use bridge_protocol::layout::QueueLayout;
use bridge_protocol::wire::{self, RequestFile};
use libfuzzer_sys::fuzz_target;

/// The token; the dictionary holds it so the fuzzer gets past authentication.
const TOKEN: &str = "fuzz-token-abcdefghijklmnopqrstuvwxyz";

struct Gateway {
    addr: SocketAddr,
    queue: PathBuf,
}

/// One gateway for the whole run, on its own runtime thread; a 1 ms response time-out
/// answers every spooled request at once (there is no host).
fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let queue = dir.join("queue");
        let vars = [
            ("PAPERCLIP_BRIDGE_QUEUE_DIR", queue.display().to_string()),
            ("PAPERCLIP_BRIDGE_TOKEN", TOKEN.to_owned()),
            ("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "1".to_owned()),
            ("PAPERCLIP_BRIDGE_HEADER_TIMEOUT_MS", "200".to_owned()),
            ("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "65536".to_owned()),
        ];
        let config = GatewayConfig::from_lookup(|k| {
            vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.clone())
        })
        .expect("config");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let (listener, state, _) = bridge_server::start(config).await.expect("start");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                bridge_server::run(listener, state, std::future::pending()).await;
            });
        });
        let addr = rx.recv().expect("gateway started");
        Gateway { addr, queue }
    })
}

/// Sends `data`, half-closes, and reads what comes back (bounded).
fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // A refusal may close before all is written: that is fine, read what came back.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.take(1 << 20).read_to_end(&mut answer);
    answer
}

fn check_answer(answer: &[u8]) {
    if answer.is_empty() {
        return; // closed without an answer: hyper's choice for an unreadable head
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]);
    // hyper answers in the request's version: HTTP/1.0 gets HTTP/1.0.
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    assert!((100..600).contains(&status), "{head:?}");
    assert!(!(200..300).contains(&status), "a success with no host: {head:?}");
}

/// Every request file left in the queue is valid queue_v1 the host can check.
fn check_queue(queue: &std::path::Path) {
    let layout = QueueLayout::new(queue);
    let Ok(entries) = std::fs::read_dir(layout.requests_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue; // withdrawn meanwhile
        };
        let file: RequestFile = wire::parse(&bytes, usize::MAX).expect("valid queue_v1");
        let _ = bridge_host::worker::check(&file.id, &bytes, policy());
    }
}

fn policy() -> &'static HostPolicy {
    static POLICY: OnceLock<HostPolicy> = OnceLock::new();
    POLICY.get_or_init(HostPolicy::default)
}

fuzz_target!(|data: &[u8]| {
    let gateway = gateway();
    check_answer(&exchange(gateway.addr, data));
    check_queue(&gateway.queue);
});
