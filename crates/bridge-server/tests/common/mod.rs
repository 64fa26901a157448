//! Test harness: the real gateway binary on a temporary queue, a minimal HTTP client, and
//! a "host" thread that answers request files the way a queue_v1 host does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bridge_protocol::wire::{RequestFile, ResponseFile};

pub const TOKEN: &str = "test-token-abcdefghijklmnopqrstuv";

/// A running gateway; killed on drop, printing its log if the test failed.
pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Gateway {
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(env, None)
    }

    /// [`Gateway::start`] with at most `nofile` open files (soft and hard limit).
    pub fn start_with(env: &[(&str, &str)], nofile: Option<u32>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_with(dir.path(), env, nofile);
        let ready = dir.path().join("queue/ready.json");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut gateway = Gateway {
            child,
            dir,
            port: 0,
        };
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                gateway.port = v["port"].as_u64().unwrap() as u16;
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("gateway exited early ({status}):\n{}", gateway.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("gateway not ready in 10 s:\n{}", gateway.log());
    }

    pub fn queue(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        http(self.port, method, path, headers, body)
    }

    /// A request with the right token.
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        http(self.port, method, path, &all, body)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("gateway did not exit within {bound:?}:\n{}", self.log());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let line = gateway_command_line().join(" ");
            eprintln!("--- gateway log ({line}) ---\n{}", self.log());
        }
    }
}

/// Starts the gateway binary with the queue under `dir` and `env` on top of the basics.
pub fn spawn(dir: &Path, env: &[(&str, &str)]) -> Child {
    spawn_with(dir, env, None)
}

/// The gateway the tests run, as a command line: `BRIDGE_GATEWAY_BIN` (another build, e.g.
/// the aarch64 one) behind the `BRIDGE_GATEWAY_RUNNER` prefix (e.g. `qemu-aarch64-static`),
/// else the binary cargo built for this crate.
pub fn gateway_command_line() -> Vec<String> {
    let binary = std::env::var("BRIDGE_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_paperclip-bridge-server").to_owned());
    let runner = std::env::var("BRIDGE_GATEWAY_RUNNER").unwrap_or_default();
    runner
        .split_whitespace()
        .map(str::to_owned)
        .chain([binary])
        .collect()
}

/// [`spawn`], through `sh -c 'ulimit -n N'` when `nofile` is given.
pub fn spawn_with(dir: &Path, env: &[(&str, &str)], nofile: Option<u32>) -> Child {
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let line = gateway_command_line();
    let mut command = match nofile {
        None => {
            let mut direct = Command::new(&line[0]);
            direct.args(&line[1..]);
            direct
        }
        Some(n) => {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", &format!("ulimit -n {n} && exec \"$@\""), "sh"])
                .args(&line);
            sh
        }
    };
    command
        .env_clear()
        .env("PAPERCLIP_BRIDGE_QUEUE_DIR", dir.join("queue"))
        .env("PAPERCLIP_BRIDGE_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Plays the host: answers each new request file with `answer(request)`.
pub struct Host {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub seen: Arc<Mutex<Vec<RequestFile>>>,
}

impl Host {
    pub fn start(
        queue: PathBuf,
        answer: impl Fn(&RequestFile) -> Option<ResponseFile> + Send + 'static,
    ) -> Host {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut done = HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    for entry in std::fs::read_dir(queue.join("requests")).unwrap().flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let Some(id) = name.strip_suffix(".json") else {
                            continue;
                        };
                        if !done.insert(id.to_owned()) {
                            continue;
                        }
                        let Ok(text) = std::fs::read(entry.path()) else {
                            continue;
                        };
                        // Files the test put there by hand are not requests to answer.
                        let Ok(request) = serde_json::from_slice::<RequestFile>(&text) else {
                            continue;
                        };
                        seen.lock().unwrap().push(request.clone());
                        if let Some(response) = answer(&request) {
                            write_response(&queue, &response);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Host {
            stop,
            thread: Some(thread),
            seen,
        }
    }

    pub fn seen(&self) -> Vec<RequestFile> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a response file as a queue_v1 host does (tmp + rename).
pub fn write_response(queue: &Path, response: &ResponseFile) {
    let path = queue
        .join("responses")
        .join(format!("{}.json", response.id));
    let tmp = queue
        .join("responses")
        .join(format!("{}.json.tmp", response.id));
    std::fs::write(&tmp, bridge_protocol::wire::to_line(response)).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// A 200 JSON answer echoing the request's method and path.
pub fn echo(request: &RequestFile) -> Option<ResponseFile> {
    let body = serde_json::json!({"id": request.id, "method": request.method, "path": request.path, "query": request.query});
    Some(ResponseFile::new(
        &request.id,
        200,
        [("content-type".to_owned(), "application/json".to_owned())].into(),
        body.to_string().as_bytes(),
        "2026-11-28T00:00:00.000Z".into(),
    ))
}

/// Waits (bounded) until `check` holds.
pub fn eventually(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{what}: not within {bound:?}");
}

/// The `.json` entries in a queue sub-directory.
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect()
}
