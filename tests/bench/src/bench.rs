//! `paperclip-bridge-bench bench` (run it with `cargo xtask bench bridge`): the bridge end
//! to end per transport, with an injected exec latency `d` and upstream latency `u`. The
//! load runs inside the sandbox (`paperclip-bridge-bench load`); every answer must be a 200.
//! Prints a Markdown table, then the same figures as one JSON line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bridge_host::deploy::{Bridge, BridgeConfig, BridgeHandle};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{BwrapSandbox, DelayRunner, Exec, LocalRunner, Mounts, Runner};
use bridge_host::transport::TransportKind;
use clap::Args;
use serde_json::{json, Value};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The gateway binary (the static dist build is what ships).
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: PathBuf,
    /// Seconds of idle time to count execs over.
    #[arg(long, default_value_t = 10)]
    pub idle_seconds: u64,
    /// Seconds of concurrent load.
    #[arg(long, default_value_t = 5)]
    pub load_seconds: u64,
    /// Measure how cost grows with 1, 10 and 100 bridges instead of the matrix.
    #[arg(long)]
    pub scale: bool,
    /// Only this transport's cells (stream, oneshot, posix or shared-fs).
    #[arg(long, value_name = "NAME")]
    pub transport: Option<String>,
}

/// One cell of the matrix.
struct Cell {
    transport: &'static str,
    d: u64,
    u: u64,
}

/// The exec-based transports, measured at every `d` and `u`; shared-fs needs no exec, so
/// only at `d` = 0.
const EXEC_TRANSPORTS: &[&str] = &["stream", "oneshot", "posix"];

fn matrix(only: Option<&str>) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &transport in EXEC_TRANSPORTS.iter().chain(&["shared-fs"]) {
        let delays: &[u64] = if transport == "shared-fs" {
            &[0]
        } else {
            &[0, 25]
        };
        for &d in delays {
            for u in [0, 50] {
                cells.push(Cell { transport, d, u });
            }
        }
    }
    cells.retain(|c| only.is_none_or(|t| t == c.transport));
    cells
}

pub async fn bench(args: BenchArgs) -> Result<ExitCode> {
    if args.scale {
        let rows = crate::bench_scale::scale(&args).await?;
        crate::bench_scale::print_table(&rows);
        println!("{}", json!({ "cores": cores(), "scale": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    let cells = matrix(args.transport.as_deref());
    if cells.is_empty() {
        bail!("no transport named {:?}", args.transport);
    }
    let mut rows = Vec::new();
    for cell in &cells {
        eprintln!("bench: {} d={}ms u={}ms", cell.transport, cell.d, cell.u);
        rows.push(
            run_cell(&args, cell)
                .await
                .with_context(|| format!("{} d={} u={}", cell.transport, cell.d, cell.u))?,
        );
    }
    print_table(&rows);
    println!("{}", json!({ "cores": cores(), "rows": rows }));
    Ok(ExitCode::SUCCESS)
}

async fn run_cell(args: &BenchArgs, cell: &Cell) -> Result<Value> {
    let upstream = crate::upstream::DemoUpstream::start_with_latency(
        "bench-key".into(),
        Duration::from_millis(cell.u),
    )
    .await?;
    let dir = std::env::temp_dir().join(format!(
        "pcb-bench-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    let mut sandbox_ms = None;
    let (runner, netns): (Arc<dyn Runner>, Option<Arc<BwrapSandbox>>) =
        if cell.transport == "shared-fs" {
            (Arc::new(LocalRunner), None)
        } else {
            let made = Instant::now();
            let sandbox =
                Arc::new(BwrapSandbox::create_with(&dir, &crate::bench::load_mounts()?).await?);
            sandbox_ms = Some(made.elapsed().as_secs_f64() * 1000.0);
            (
                Arc::new(DelayRunner::new(
                    sandbox.clone(),
                    Duration::from_millis(cell.d),
                )),
                Some(sandbox),
            )
        };
    let client = Upstream::new(
        &upstream.url(),
        Secret::new("bench-key".into()),
        None,
        Duration::from_secs(30),
    )?;
    let mut config = BridgeConfig::new(args.gateway_bin.clone(), dir.clone(), client);
    config.transport = match cell.transport {
        "stream" => TransportKind::Stream,
        "oneshot" => TransportKind::OneShot,
        "posix" => TransportKind::Posix,
        _ => TransportKind::SharedFs,
    };
    config.worker.concurrency = 16;
    config.max_queue_depth = 256;
    // Warm the binary cache so start-up measures the start, not the upload.
    Bridge::start(runner.clone(), config.clone())
        .await?
        .stop()
        .await?;
    let started = Instant::now();
    let bridge = Bridge::start(runner.clone(), config).await?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut result = measure(args, cell, &runner, &bridge, &dir, startup_ms).await;
    if let Ok(row) = &mut result {
        row["sandbox_ms"] = json!(sandbox_ms);
    }
    bridge.stop().await?;
    if let Some(sandbox) = netns {
        sandbox.destroy().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    args: &BenchArgs,
    cell: &Cell,
    runner: &Arc<dyn Runner>,
    bridge: &BridgeHandle,
    dir: &std::path::Path,
    startup_ms: f64,
) -> Result<Value> {
    // In the sandbox's PID namespace `ready.json` holds the gateway's pid there; memory is
    // read from this machine's /proc, so find its pid here.
    let gateway_pid = gateway_pid(dir).unwrap_or(bridge.ready().pid);
    let execs = || bridge.worker().exec_count();
    let before = execs();
    let seq = load(runner, bridge, dir, &["--sequential", "60"]).await?;
    let seq_execs = (execs() - before) as f64 / 60.0;
    let mut seq_lat = latencies(&seq)?;
    seq_lat.drain(..10.min(seq_lat.len()));
    let before = execs();
    let session = session_pid(bridge.queue_dir());
    let sampler = tokio::spawn(async move {
        let (mut gateway, mut helper) = (0, 0);
        for _ in 0..100 {
            gateway = gateway.max(rss_kib(gateway_pid));
            helper = helper.max(session.map_or(0, rss_kib));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (gateway, helper)
    });
    let seconds = args.load_seconds.to_string();
    let conc = load(
        runner,
        bridge,
        dir,
        &["--concurrency", "16", "--seconds", &seconds],
    )
    .await?;
    let (gw_loaded, helper_loaded) = sampler.await.unwrap_or((0, 0));
    let conc_lat = latencies(&conc)?;
    let conc_n = conc_lat.len();
    let load_execs = (execs() - before) as f64 / conc_n.max(1) as f64;
    let throughput = conc_n as f64 / conc["seconds"].as_f64().unwrap_or(1.0);
    let idle = if cell.u == 0 {
        let before = execs();
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        Some((execs() - before) as f64 / args.idle_seconds as f64)
    } else {
        None
    };
    Ok(json!({
        "transport": cell.transport, "d_ms": cell.d, "u_ms": cell.u,
        "seq_p50_ms": pct(&seq_lat, 50), "seq_p95_ms": pct(&seq_lat, 95), "seq_p99_ms": pct(&seq_lat, 99),
        "c16_req_per_s": throughput, "c16_p50_ms": pct(&conc_lat, 50), "c16_p99_ms": pct(&conc_lat, 99),
        "execs_per_req_seq": seq_execs, "execs_per_req_c16": load_execs, "idle_execs_per_s": idle,
        "gateway_rss_idle_kib": rss_kib(gateway_pid), "gateway_rss_loaded_kib": gw_loaded,
        "session_rss_loaded_kib": session.map(|_| helper_loaded),
        "host_rss_kib": rss_kib(std::process::id()), "startup_ms": startup_ms,
    }))
}

/// The sandbox shows the load generator (this very binary) read-only: it is a host file.
pub(crate) fn load_mounts() -> Result<Mounts> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    Ok(Mounts {
        read_only: vec![dir.to_path_buf()],
        ..Mounts::default()
    })
}

/// Runs the load generator inside the sandbox as an agent and returns its JSON.
async fn load(
    runner: &Arc<dyn Runner>,
    bridge: &BridgeHandle,
    dir: &std::path::Path,
    args: &[&str],
) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut words = vec![exe.to_string_lossy().into_owned(), "load".into()];
    words.extend(args.iter().map(|s| s.to_string()));
    let script = format!("exec {}", bridge_host::shell::join(&words));
    let exec = bridge
        .agent_env()
        .into_iter()
        .fold(Exec::new(script, Duration::from_secs(300)), |e, (k, v)| {
            e.env(k, v)
        })
        .cwd(dir);
    let out = runner.exec(exec).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "load output: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if value["errors"].as_u64() != Some(0) {
        bail!("the load saw {} failed requests", value["errors"]);
    }
    Ok(value)
}

fn latencies(value: &Value) -> Result<Vec<f64>> {
    let mut l: Vec<f64> = value["latencies_ms"]
        .as_array()
        .context("no latencies")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    l.sort_by(f64::total_cmp);
    Ok(l)
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) * p / 100).min(sorted.len() - 1)]
}

/// This machine's pid of the gateway deployed into `dir` (argv is its binary alone).
fn gateway_pid(dir: &std::path::Path) -> Option<u32> {
    let binary = bridge_host::deploy::BridgeConfig::remote_binary_in(dir);
    let argv = format!("{}\0", binary.display());
    find_pid(|cmdline| cmdline == argv.as_bytes())
}

/// The pid of the streaming transport's session process for `queue`, if there is one.
fn session_pid(queue: &std::path::Path) -> Option<u32> {
    let needle = format!("session\0--queue-dir\0{}", queue.display());
    find_pid(|cmdline| String::from_utf8_lossy(cmdline).contains(&needle))
}

/// The first process on this machine whose raw `/proc/PID/cmdline` `matches`.
fn find_pid(matches: impl Fn(&[u8]) -> bool) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            matches(&cmdline).then_some(pid)
        })
}

/// Resident memory of `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

pub(crate) fn rand_suffix() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn print_table(rows: &[Value]) {
    println!("| transport | d | u | seq p50 / p95 / p99 (ms) | c=16 req/s | c=16 p50 / p99 (ms) | execs/req seq | execs/req c=16 | idle execs/s | gateway RSS idle / loaded | session RSS loaded | host RSS | start-up | sandbox start |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let idle = r["idle_execs_per_s"]
            .as_f64()
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into());
        let session = r["session_rss_loaded_kib"]
            .as_f64()
            .map(|v| format!("{:.1} MiB", v / 1024.0))
            .unwrap_or_else(|| "-".into());
        let sandbox = r["sandbox_ms"]
            .as_f64()
            .map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {} ms | {} ms | {:.1} / {:.1} / {:.1} | {:.0} | {:.1} / {:.1} | {:.2} | {:.2} | {} | {:.1} / {:.1} MiB | {} | {:.1} MiB | {:.0} ms | {} |",
            r["transport"].as_str().unwrap_or("?"), r["d_ms"], r["u_ms"],
            f("seq_p50_ms"), f("seq_p95_ms"), f("seq_p99_ms"), f("c16_req_per_s"), f("c16_p50_ms"), f("c16_p99_ms"),
            f("execs_per_req_seq"), f("execs_per_req_c16"), idle,
            f("gateway_rss_idle_kib") / 1024.0, f("gateway_rss_loaded_kib") / 1024.0, session, f("host_rss_kib") / 1024.0, f("startup_ms"), sandbox,
        );
    }
}
