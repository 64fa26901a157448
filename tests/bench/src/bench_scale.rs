//! `paperclip-bridge-bench bench --scale`: how cost grows with the number of sandboxes one host
//! process serves. N namespace sandboxes, each with its bridge (stream transport), all in
//! this process; every sandbox runs 2 callers for the load time at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bridge_host::deploy::{Bridge, BridgeConfig, BridgeHandle};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{BwrapSandbox, Exec, Runner};
use serde_json::{json, Value};

use crate::bench::{rss_kib, BenchArgs};

/// This process's resident memory.
fn host_rss() -> u64 {
    rss_kib(std::process::id())
}

/// Sandbox counts measured.
const SIZES: &[usize] = &[1, 10, 100];

pub async fn scale(args: &BenchArgs) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &n in SIZES {
        let limit = inotify_instances();
        // Each bridge's gateway and session hold one inotify instance each; past the
        // limit they fall back to polling every 20 ms, which then measures the limit.
        if limit.is_some_and(|l| l < 2 * n + 16) {
            eprintln!(
                "bench: warning: fs.inotify.max_user_instances is {limit:?}, too few for {n} \
                 bridges (2 each); the gateways and sessions past it will poll"
            );
        }
        eprintln!("bench: {n} bridges in one host process");
        rows.push(run(args, n).await?);
    }
    Ok(rows)
}

async fn run(args: &BenchArgs, n: usize) -> Result<Value> {
    let upstream = crate::upstream::DemoUpstream::start("scale-key".into()).await?;
    let root = std::env::temp_dir().join(format!("pcb-scale-{}", std::process::id()));
    let rss_before = host_rss();
    let started = Instant::now();
    let mut fleet: Vec<(Arc<BwrapSandbox>, BridgeHandle, PathBuf)> = Vec::new();
    // One HTTP client for the whole fleet, as an orchestrator would hold it.
    let api = Upstream::new(
        &upstream.url(),
        Secret::new("scale-key".into()),
        None,
        Duration::from_secs(30),
    )?;
    for i in 0..n {
        let dir = root.join(i.to_string());
        std::fs::create_dir_all(&dir)?;
        let sandbox =
            Arc::new(BwrapSandbox::create_with(&dir, &crate::bench::load_mounts()?).await?);
        let client = api.for_run(Secret::new("scale-key".into()), Some(format!("run-{i}")));
        let config = BridgeConfig::new(args.gateway_bin.clone(), dir.clone(), client);
        let bridge = Bridge::start(sandbox.clone(), config).await?;
        fleet.push((sandbox, bridge, dir));
        // Counted steps, so a long fleet deployment is not silence.
        if (i + 1) % 10 == 0 || i + 1 == n {
            eprintln!(
                "bench: deployed {}/{n} bridges ({:.1} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let deploy_s = started.elapsed().as_secs_f64();
    let rss_idle = host_rss();
    let seconds = args.load_seconds.to_string();
    let mut loads = tokio::task::JoinSet::new();
    for (sandbox, bridge, dir) in &fleet {
        let exe = std::env::current_exe()?;
        let words = [
            exe.to_string_lossy().into_owned(),
            "load".into(),
            "--concurrency".into(),
            "2".into(),
            "--seconds".into(),
            seconds.clone(),
        ];
        let script = format!("exec {}", bridge_host::shell::join(&words));
        let exec = bridge
            .agent_env()
            .into_iter()
            .fold(Exec::new(script, Duration::from_secs(300)), |e, (k, v)| {
                e.env(k, v)
            })
            .cwd(dir.clone());
        let sandbox = sandbox.clone();
        loads.spawn(async move { sandbox.exec(exec).await });
    }
    // Sampled until every load is done (a thousand loads take a while to all start).
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while !*finished.borrow_and_update() {
            peak = peak.max(host_rss());
            let _ = tokio::time::timeout(Duration::from_millis(50), finished.changed()).await;
        }
        peak
    });
    let (mut requests, mut errors) = (0usize, 0u64);
    while let Some(out) = loads.join_next().await {
        let out = out??;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        requests += v["latencies_ms"].as_array().map_or(0, Vec::len);
        errors += v["errors"].as_u64().unwrap_or(1);
    }
    let _ = done.send(true);
    let rss_loaded = sampler.await.unwrap_or(0);
    // Stopped all at once, as an orchestrator ending many runs would.
    let stopping = Instant::now();
    let mut stops = tokio::task::JoinSet::new();
    for (sandbox, bridge, _) in fleet {
        stops.spawn(async move {
            let stopped = bridge.stop().await;
            sandbox.destroy().await;
            stopped
        });
    }
    while let Some(stopped) = stops.join_next().await {
        stopped??;
    }
    let stop_s = stopping.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&root);
    if errors > 0 {
        bail!("{errors} failed requests with {n} bridges");
    }
    Ok(json!({
        "bridges": n,
        "req_per_s": requests as f64 / args.load_seconds as f64,
        "deploy_s": deploy_s,
        "stop_s": stop_s,
        "inotify_max_user_instances": inotify_instances(),
        "host_rss_before_kib": rss_before,
        "host_rss_idle_kib": rss_idle,
        "host_rss_loaded_kib": rss_loaded,
    }))
}

/// This machine's limit on inotify instances per user (all sandboxes share it).
fn inotify_instances() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The table; memory per bridge is each row's growth over the one-bridge row, divided
/// by the bridges added (what one more sandbox costs the host).
pub fn print_table(rows: &[Value]) {
    println!("\n| bridges in one host process | total req/s (2 callers each, 5 s) | deploy all (per bridge) | stop all | host RSS idle / loaded | host memory per added bridge idle / loaded |");
    println!("|---|---|---|---|---|---|");
    let base = |k: &str| rows.first().and_then(|r| r[k].as_f64()).unwrap_or(f64::NAN);
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let added = f("bridges") - 1.0;
        let per = |k: &str| match added {
            0.0 => "-".to_owned(),
            n => format!("{:.2}", (f(k) - base(k)) / n / 1024.0),
        };
        println!(
            "| {} | {:.0} | {:.1} s ({:.0} ms) | {:.1} s | {:.1} / {:.1} MiB | {} / {} MiB |",
            r["bridges"],
            f("req_per_s"),
            f("deploy_s"),
            f("deploy_s") * 1000.0 / f("bridges"),
            f("stop_s"),
            f("host_rss_idle_kib") / 1024.0,
            f("host_rss_loaded_kib") / 1024.0,
            per("host_rss_idle_kib"),
            per("host_rss_loaded_kib"),
        );
    }
}
