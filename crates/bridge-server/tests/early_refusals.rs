//! Early refusals every HTTP client reads: the gateway refuses a call (401, 413, 415)
//! before reading its body, then reads the rest of the body (bounded) before it answers,
//! so clients that are still sending see the status instead of EPIPE or a reset. Real
//! clients: Node's `fetch` (undici, what agents written in Node use) and Python's
//! `http.client`, each with a Content-Length and chunked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Gateway, TOKEN};

/// The body size limit the gateway runs with, and the size of the bodies sent (well over
/// it, and over the socket buffers, so the client is still sending when refused).
const LIMIT: usize = 64 * 1024;
const SENT: usize = 8 * 1024 * 1024;

/// Node: `fetch` with a Content-Length (a Uint8Array) or chunked (a stream body).
const NODE: &str = r#"
const [url, token, type, mode, size] = process.argv.slice(1);
const bytes = new Uint8Array(Number(size)).fill(120);
const init = { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": type } };
if (mode === "chunked") {
  init.duplex = "half";
  init.body = new ReadableStream({
    start(c) { for (let i = 0; i < bytes.length; i += 65536) c.enqueue(bytes.subarray(i, i + 65536)); c.close(); },
  });
} else {
  init.body = bytes;
}
fetch(url, init).then(
  async (r) => { await r.text(); console.log(`status=${r.status}`); },
  (e) => { console.log(`error=${e.cause ? e.cause.code : e.message}`); },
);
"#;

/// Python: `http.client` with a Content-Length or `encode_chunked`.
const PYTHON: &str = r#"
import http.client, sys, urllib.parse
url, token, ctype, mode, size = sys.argv[1:]
u = urllib.parse.urlsplit(url)
body = b"x" * int(size)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
headers = {"Authorization": "Bearer " + token, "Content-Type": ctype}
try:
    if mode == "chunked":
        c.request("POST", u.path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                  headers=headers, encode_chunked=True)
    else:
        c.request("POST", u.path, body=body, headers=headers)
    r = c.getresponse(); r.read(); print("status=%d" % r.status)
except Exception as e:
    print("error=%s" % type(e).__name__)
"#;

fn client(program: &str, script: &str, url: &str, token: &str, ctype: &str, mode: &str) -> String {
    let mut command = Command::new(program);
    match program {
        "node" => command.args(["-e", script, "--"]),
        _ => command.args(["-c", script]),
    };
    let out = command
        .args([url, token, ctype, mode, &SENT.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        said.starts_with("status=") || said.starts_with("error="),
        "{program} said {said:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

#[test]
fn every_client_reads_the_early_refusal_with_or_without_a_length() {
    let gateway = Gateway::start(&[("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", &LIMIT.to_string())]);
    let url = format!("http://127.0.0.1:{}/api/issues/i1/comments", gateway.port);
    let cases = [
        (
            "wrong token",
            "wrong-token",
            "application/json",
            "status=401",
        ),
        ("too large", TOKEN, "application/json", "status=413"),
        ("not JSON", TOKEN, "application/octet-stream", "status=415"),
    ];
    let mut failures = Vec::new();
    for program in ["node", "python3"] {
        let script = if program == "node" { NODE } else { PYTHON };
        for mode in ["length", "chunked"] {
            for (what, token, ctype, expected) in cases {
                let said = client(program, script, &url, token, ctype, mode);
                if said != expected {
                    failures.push(format!("{program} {mode} {what}: {said}, not {expected}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", gateway.log());
}
