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
    /// Only the cells with this exec delay `d` (ms).
    #[arg(long, value_name = "MS")]
    pub delay_ms: Option<u64>,
}

/// The upstream's credential (a bench has no secret).
const BENCH_KEY: &str = "bench-key";

/// One cell of the matrix.
struct Cell {
    transport: &'static str,
    d: u64,
    u: u64,
}

/// The exec-based transports, measured at every `d` and `u`; shared-fs needs no exec, so
/// only at `d` = 0.
const EXEC_TRANSPORTS: &[&str] = &["stream", "oneshot", "posix"];

/// Exec delays measured with an upstream latency too; [`FAR`] is measured with `u` = 0.
const DELAYS: &[u64] = &[0, 25];
/// The distant provider's `d` (ms).
const FAR: u64 = 100;
/// Callers at once in the two loaded runs.
const LOADS: [usize; 2] = [16, 64];
/// The large-body transfers' size (10 MiB, within the default body limit), measured in the
/// `u` = 0 cells nearer than [`FAR`].
const LARGE_BYTES: usize = 10 << 20;
/// Transfers each way of [`LARGE_BYTES`]; the median is reported.
const LARGE_REPEAT: usize = 3;

fn matrix(only: Option<&str>, delay: Option<u64>) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &transport in EXEC_TRANSPORTS.iter().chain(&["shared-fs"]) {
        if transport == "shared-fs" {
            cells.extend([0, 50].map(|u| Cell { transport, d: 0, u }));
            continue;
        }
        for &d in DELAYS {
            cells.extend([0, 50].map(|u| Cell { transport, d, u }));
        }
        cells.push(Cell {
            transport,
            d: FAR,
            u: 0,
        });
    }
    cells.retain(|c| only.is_none_or(|t| t == c.transport));
    cells.retain(|c| delay.is_none_or(|d| d == c.d));
    cells
}

pub async fn bench(args: BenchArgs) -> Result<ExitCode> {
    if args.scale {
        let rows = crate::bench_scale::scale(&args).await?;
        crate::bench_scale::print_table(&rows);
        println!("{}", json!({ "cores": cores(), "scale": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    let cells = matrix(args.transport.as_deref(), args.delay_ms);
    if cells.is_empty() {
        bail!(
            "no cells for transport {:?} and delay {:?}",
            args.transport,
            args.delay_ms
        );
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
        BENCH_KEY.into(),
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
        Secret::new(BENCH_KEY.into()),
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
    // As many forwards at once as the most callers a row has, so c = 64 is not capped here.
    config.worker.concurrency = 64;
    config.max_queue_depth = 256;
    // Warm the binary cache so start-up measures the start, not the upload.
    Bridge::start(runner.clone(), config.clone())
        .await?
        .stop()
        .await?;
    let started = Instant::now();
    let bridge = Bridge::start(runner.clone(), config).await?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let url = upstream.url();
    let mut result = measure(args, cell, &runner, &bridge, (&dir, &url), startup_ms).await;
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
    (dir, upstream_url): (&std::path::Path, &str),
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
    let mut loaded = serde_json::Map::new();
    for callers in LOADS {
        let before = execs();
        let out = load(
            runner,
            bridge,
            dir,
            &["--concurrency", &callers.to_string(), "--seconds", &seconds],
        )
        .await?;
        let lat = latencies(&out)?;
        let n = lat.len();
        let per_s = n as f64 / out["seconds"].as_f64().unwrap_or(1.0);
        let c = format!("c{callers}");
        loaded.insert(format!("{c}_req_per_s"), json!(per_s));
        loaded.insert(format!("{c}_p50_ms"), json!(pct(&lat, 50)));
        loaded.insert(format!("{c}_p99_ms"), json!(pct(&lat, 99)));
        let per_req = (execs() - before) as f64 / n.max(1) as f64;
        loaded.insert(format!("execs_per_req_{c}"), json!(per_req));
    }
    let (gw_loaded, helper_loaded) = sampler.await.unwrap_or((0, 0));
    let idle = if cell.u == 0 {
        let before = execs();
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        Some((execs() - before) as f64 / args.idle_seconds as f64)
    } else {
        None
    };
    // Read before the large transfers: the allocator keeps their buffers afterwards.
    let host_rss = rss_kib(std::process::id());
    let large = match cell.u == 0 && cell.d < FAR {
        true => Some(large(runner, bridge, dir).await?),
        false => None,
    };
    let direct = match cell.d {
        0 => Some(direct(upstream_url).await?),
        _ => None,
    };
    let mut row = json!({
        "transport": cell.transport, "d_ms": cell.d, "u_ms": cell.u,
        "seq_p50_ms": pct(&seq_lat, 50), "seq_p95_ms": pct(&seq_lat, 95), "seq_p99_ms": pct(&seq_lat, 99),
        "direct_p50_ms": direct.as_ref().map(|d| pct(d, 50)),
        "direct_p99_ms": direct.as_ref().map(|d| pct(d, 99)),
        "execs_per_req_seq": seq_execs, "idle_execs_per_s": idle,
        "gateway_rss_idle_kib": rss_kib(gateway_pid), "gateway_rss_loaded_kib": gw_loaded,
        "session_rss_loaded_kib": session.map(|_| helper_loaded),
        "host_rss_kib": host_rss, "startup_ms": startup_ms,
        "large_up_mb_per_s": large.map(|l| l.0), "large_down_mb_per_s": large.map(|l| l.1),
    });
    if let Some(row) = row.as_object_mut() {
        row.extend(loaded);
    }
    Ok(row)
}

/// [`LARGE_BYTES`] up and down through the bridge, checked byte by byte in the sandbox:
/// the median rate each way in MB/s (10^6 bytes).
async fn large(
    runner: &Arc<dyn Runner>,
    bridge: &BridgeHandle,
    dir: &std::path::Path,
) -> Result<(f64, f64)> {
    let (bytes, repeat) = (LARGE_BYTES.to_string(), LARGE_REPEAT.to_string());
    let out = load(
        runner,
        bridge,
        dir,
        &["--large", &bytes, "--repeat", &repeat],
    )
    .await?;
    let rate = |key: &str| -> Result<f64> {
        let mut seconds: Vec<f64> = out[key]
            .as_array()
            .with_context(|| format!("no {key} in {out}"))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        seconds.sort_by(f64::total_cmp);
        Ok(LARGE_BYTES as f64 / 1e6 / pct(&seconds, 50))
    };
    Ok((rate("upload_s")?, rate("download_s")?))
}

/// Sequential calls from this machine straight to the upstream (no bridge), the same
/// load generator as in the sandbox: what the bridge adds is the difference.
async fn direct(upstream_url: &str) -> Result<Vec<f64>> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args(["load", "--sequential", "60"])
        .env("PAPERCLIP_API_URL", upstream_url)
        .env("PAPERCLIP_API_KEY", BENCH_KEY)
        .output()
        .await
        .context("running the load generator on this machine")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Value =
        serde_json::from_str(text.trim()).with_context(|| format!("direct load output: {text}"))?;
    if value["errors"].as_u64() != Some(0) {
        bail!("the direct load saw {} failed requests", value["errors"]);
    }
    let mut lat = latencies(&value)?;
    lat.drain(..10.min(lat.len()));
    Ok(lat)
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

/// The round-trip floors beside each figure: a call cannot beat `d + u`, nor `c` callers
/// `c / (d + u)`, nor a start one exec (`d`).
fn floor(r: &Value) -> (f64, impl Fn(usize) -> String) {
    let rtt = r["d_ms"].as_f64().unwrap_or(0.0) + r["u_ms"].as_f64().unwrap_or(0.0);
    let rate = move |c: usize| match rtt {
        0.0 => "-".to_owned(),
        rtt => format!("{:.0}", c as f64 * 1000.0 / rtt),
    };
    (rtt, rate)
}

fn print_table(rows: &[Value]) {
    println!("| transport | d | u | start-up (floor d) | seq p50 / p95 / p99 (floor d+u) | added by the bridge p50 / p99 | c=16 req/s (floor) | c=16 p50 / p99 | c=64 req/s (floor) | c=64 p50 / p99 | execs/req seq / c=16 / c=64 | idle execs/s | 10 MiB up / down (MB/s) | gateway RSS idle / loaded | session RSS loaded | host RSS | sandbox start |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let opt = |k: &str, show: &dyn Fn(f64) -> String| {
            r[k].as_f64().map(show).unwrap_or_else(|| "-".into())
        };
        let (rtt, rate) = floor(r);
        let added = match (r["direct_p50_ms"].as_f64(), r["direct_p99_ms"].as_f64()) {
            (Some(p50), Some(p99)) => format!(
                "{:+.2} / {:+.2} ms (direct {p50:.2} / {p99:.2})",
                f("seq_p50_ms") - p50,
                f("seq_p99_ms") - p99
            ),
            _ => "-".into(),
        };
        let large = match (
            r["large_up_mb_per_s"].as_f64(),
            r["large_down_mb_per_s"].as_f64(),
        ) {
            (Some(up), Some(down)) => format!("{up:.0} / {down:.0}"),
            _ => "-".into(),
        };
        println!(
            "| {} | {} ms | {} ms | {:.0} ms ({}) | {:.1} / {:.1} / {:.1} ({rtt:.0}) | {added} | {:.0} ({}) | {:.1} / {:.1} | {:.0} ({}) | {:.1} / {:.1} | {:.2} / {:.2} / {:.2} | {} | {large} | {:.1} / {:.1} MiB | {} | {:.1} MiB | {} |",
            r["transport"].as_str().unwrap_or("?"), r["d_ms"], r["u_ms"],
            f("startup_ms"), r["d_ms"],
            f("seq_p50_ms"), f("seq_p95_ms"), f("seq_p99_ms"),
            f("c16_req_per_s"), rate(16), f("c16_p50_ms"), f("c16_p99_ms"),
            f("c64_req_per_s"), rate(64), f("c64_p50_ms"), f("c64_p99_ms"),
            f("execs_per_req_seq"), f("execs_per_req_c16"), f("execs_per_req_c64"),
            opt("idle_execs_per_s", &|v| format!("{v:.2}")),
            f("gateway_rss_idle_kib") / 1024.0, f("gateway_rss_loaded_kib") / 1024.0,
            opt("session_rss_loaded_kib", &|v| format!("{:.1} MiB", v / 1024.0)),
            f("host_rss_kib") / 1024.0,
            opt("sandbox_ms", &|v| format!("{v:.0} ms")),
        );
    }
}
