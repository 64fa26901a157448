//! `cargo xtask bench gateway`: what the gateway adds to a round trip, and what it costs.
//! `cargo xtask bench bridge`: the whole bridge, run by the bench-only binary
//! `paperclip-bridge-bench` (tests/bench), recorded in docs/benchmarks.md after whole runs.
//!
//! Starts the shipped (static, size-optimised) gateway on a temporary queue, plays an
//! in-process host that answers each request file as soon as it sees it, and measures
//! sequential round-trip latency, the gateway's resident memory idle and under 64
//! concurrent callers, and the binary's size. Prints a Markdown table.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::dist;

const TOKEN: &str = "bench-token-0123456789abcdefghijk";
const SEQUENTIAL: usize = 2000;
const CONCURRENT: usize = 64;
const PER_CALLER: usize = 50;

pub fn main(args: &[String]) -> Result<()> {
    match args {
        [what] if what == "gateway" => gateway(),
        [what, extra @ ..] if what == "bridge" => bridge(extra),
        _ => bail!(
            "usage: cargo xtask bench gateway | bridge [--scale] [--transport stream|oneshot|posix|shared-fs] [--delay-ms D]"
        ),
    }
}

/// The whole bridge per transport and latency: the optimised bench binary runs the matrix
/// (its options are passed through) with the static gateway it is given.
fn bridge(extra: &[String]) -> Result<()> {
    let (report, ok) = run_bench_binary("bench", extra, "warn")?;
    if !ok {
        bail!("paperclip-bridge-bench bench failed");
    }
    match extra {
        [] => record("bridge", &report),
        [flag] if flag == "--scale" => record("scale", &report),
        _ => Ok(()),
    }
}

/// Replaces the generated block `name` in docs/benchmarks.md (between its two marker
/// comments) with `report` (a Markdown table, then a JSON line) and the date.
/// Builds the static gateway and `paperclip-bridge-bench` (fast profile), runs its
/// `command` with `extra` and the gateway (logging at `log`), and returns its report (stdout, also printed)
/// and whether it succeeded.
pub fn run_bench_binary(command: &str, extra: &[String], log: &str) -> Result<(String, bool)> {
    let binary = dist::build("x86_64-unknown-linux-musl")?;
    crate::run(crate::cargo().args([
        "build",
        "--locked",
        "--profile",
        "fast",
        "-p",
        "bridge-bench",
        "--bin",
        "paperclip-bridge-bench",
    ]))?;
    let cli = crate::target_dir().join("fast/paperclip-bridge-bench");
    let out = Command::new(cli)
        .arg(command)
        .args(extra)
        .arg("--gateway-bin")
        .arg(binary)
        .env("RUST_LOG", log)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running paperclip-bridge-bench {command}"))?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{report}");
    Ok((report, out.status.success()))
}

fn record(name: &str, report: &str) -> Result<()> {
    record_in("docs/benchmarks.md", &format!("bench {name}"), report)
}

/// Replaces the `<!-- generated: NAME -->` block of `doc` with `report`'s table and JSON.
pub fn record_in(doc: &str, name: &str, report: &str) -> Result<()> {
    let path = crate::workspace_root().join(doc);
    let doc =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (begin, end) = (
        format!("<!-- generated: {name} -->"),
        format!("<!-- end: {name} -->"),
    );
    let (Some(start), Some(stop)) = (doc.find(&begin), doc.find(&end)) else {
        bail!("{} has no {begin} ... {end} block", path.display());
    };
    let table: Vec<&str> = report.lines().filter(|l| l.starts_with('|')).collect();
    let json = report.lines().find(|l| l.starts_with('{')).unwrap_or("{}");
    let date = Command::new("date").arg("+%Y-%m-%d").output()?;
    let block = format!(
        "{begin}\nRun on {}, {} cores:\n\n{}\n\n```json\n{json}\n```\n",
        String::from_utf8_lossy(&date.stdout).trim(),
        cores(),
        table.join("\n"),
    );
    let updated = format!("{}{block}{}", &doc[..start], &doc[stop..]);
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    println!("recorded in {}", path.display());
    Ok(())
}

fn gateway() -> Result<()> {
    let binary = dist::build("x86_64-unknown-linux-musl")?;
    let size = std::fs::metadata(&binary)?.len();
    let queue = scratch_dir()?;
    let mut server = start_gateway(&binary, &queue)?;
    let result = measure(&queue, &server);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&queue);
    let m = result?;
    println!(
        "\n## Gateway (`cargo xtask bench gateway`, {} cores)\n",
        cores()
    );
    println!("| measure | value |\n|---|---|");
    println!(
        "| round trip p50 (sequential, {SEQUENTIAL} requests) | {:.3} ms |",
        m.p50
    );
    println!("| round trip p99 | {:.3} ms |", m.p99);
    println!("| RSS idle | {:.1} MiB |", m.rss_idle as f64 / 1024.0);
    println!(
        "| RSS with {CONCURRENT} concurrent callers (peak seen) | {:.1} MiB |",
        m.rss_loaded as f64 / 1024.0
    );
    println!(
        "| throughput, {CONCURRENT} callers | {:.0} req/s |",
        m.throughput
    );
    println!(
        "| binary size (static, stripped) | {:.2} MiB |",
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

struct Measures {
    p50: f64,
    p99: f64,
    rss_idle: u64,
    rss_loaded: u64,
    throughput: f64,
}

fn measure(queue: &Path, server: &Child) -> Result<Measures> {
    let port = wait_ready(queue)?;
    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let (queue, stop) = (queue.to_path_buf(), stop.clone());
        std::thread::spawn(move || answer_loop(&queue, &stop))
    };
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    let mut conn = Conn::open(port)?;
    for _ in 0..100 {
        conn.get()?; // warm-up
    }
    let rss_idle = rss_kib(server.id())?;
    for _ in 0..SEQUENTIAL {
        let started = Instant::now();
        conn.get()?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let (rss_loaded, throughput) = concurrent(port, server.id())?;
    stop.store(true, Ordering::Relaxed);
    let _ = host.join();
    Ok(Measures {
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
        rss_idle,
        rss_loaded,
        throughput,
    })
}

/// 64 callers at once; samples the gateway's RSS while they run.
fn concurrent(port: u16, pid: u32) -> Result<(u64, f64)> {
    let started = Instant::now();
    let callers: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            std::thread::spawn(move || -> Result<()> {
                let mut conn = Conn::open(port)?;
                for _ in 0..PER_CALLER {
                    conn.get()?;
                }
                Ok(())
            })
        })
        .collect();
    let mut peak = 0;
    while callers.iter().any(|c| !c.is_finished()) {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    for caller in callers {
        caller
            .join()
            .map_err(|_| anyhow::anyhow!("a caller panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((peak, (CONCURRENT * PER_CALLER) as f64 / elapsed))
}

/// The in-process host: answers every request file as soon as it appears.
fn answer_loop(queue: &Path, stop: &AtomicBool) {
    let requests = queue.join("requests");
    let responses = queue.join("responses");
    while !stop.load(Ordering::Relaxed) {
        let mut answered = false;
        for entry in std::fs::read_dir(&requests).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let response = responses.join(format!("{id}.json"));
            if response.exists() {
                continue;
            }
            let body = format!(
                "{{\"id\":\"{id}\",\"status\":200,\"headers\":{{\"content-type\":\"application/json\"}},\"body\":\"{{\\\"ok\\\":true}}\",\"completedAt\":\"2026-01-01T00:00:00.000Z\"}}\n"
            );
            let tmp = responses.join(format!("{id}.json.tmp"));
            if std::fs::write(&tmp, body).is_ok() {
                let _ = std::fs::rename(&tmp, &response);
                answered = true;
            }
        }
        if !answered {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// A keep-alive HTTP/1.1 connection to the gateway.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    fn get(&mut self) -> Result<()> {
        let request = format!(
            "GET /api/agents/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("unexpected answer: {status:?}");
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(())
    }
}

fn start_gateway(binary: &Path, queue: &Path) -> Result<Child> {
    Command::new(binary)
        .env("PAPERCLIP_BRIDGE_QUEUE_DIR", queue)
        .env("PAPERCLIP_BRIDGE_TOKEN", TOKEN)
        .env("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "1024")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the gateway")
}

fn wait_ready(queue: &Path) -> Result<u16> {
    let ready = queue.join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let value: serde_json::Value = serde_json::from_str(&text)?;
            return value["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .context("ready.json has no port");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("the gateway did not write ready.json within 10 s")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pcb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
