//! `paperclip-bridge-bench chaos` (run it with `cargo xtask chaos`): the fault matrix. For
//! each transport and fault rate, a bridge into a bubblewrap sandbox through the fault
//! injector (`chaos_runner.rs`), unique mutations from inside for a set time, then every
//! request counted against what the upstream applied: answered, applied twice, applied but
//! reported retryable, reported 2xx but never applied, hung. Prints a Markdown table, then
//! the same figures as one JSON line.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bridge_host::deploy::{Bridge, BridgeConfig};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{BwrapSandbox, Exec, Runner};
use bridge_host::transport::TransportKind;
use clap::Args;
use serde_json::{json, Value};

use crate::chaos_runner::{ChaosRunner, FAULTS};
use crate::load::{HUNG, NO_ANSWER};

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// The gateway binary (the static dist build is what ships).
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: std::path::PathBuf,
    /// Seconds of load per cell.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Callers at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Only this cell: `TRANSPORT:RATE[:start]` (e.g. `stream:0.3`), for a quick check.
    #[arg(long, value_name = "CELL")]
    pub only: Option<String>,
}

/// One cell: a transport, a fault rate, and whether faults start with the first exec.
#[derive(Debug, Clone)]
struct Cell {
    transport: String,
    rate: f64,
    from_start: bool,
}

fn matrix(only: Option<&str>) -> Result<Vec<Cell>> {
    if let Some(spec) = only {
        let mut parts = spec.split(':');
        let transport = parts.next().unwrap_or_default().to_owned();
        let rate = parts.next().context("--only TRANSPORT:RATE")?.parse()?;
        let from_start = parts.next() == Some("start");
        return Ok(vec![Cell {
            transport,
            rate,
            from_start,
        }]);
    }
    let mut cells = Vec::new();
    for transport in ["stream", "oneshot", "posix"] {
        for (rate, from_start) in [(0.1, false), (0.3, false), (0.1, true)] {
            cells.push(Cell {
                transport: transport.into(),
                rate,
                from_start,
            });
        }
    }
    Ok(cells)
}

pub async fn chaos(args: ChaosArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for cell in matrix(args.only.as_deref())? {
        eprintln!(
            "chaos: {} at {:.0} %{} ...",
            cell.transport,
            cell.rate * 100.0,
            if cell.from_start {
                " from the first exec"
            } else {
                ""
            }
        );
        let row = run_cell(&args, &cell)
            .await
            .with_context(|| format!("cell {cell:?}"))?;
        eprintln!("chaos: {row}");
        rows.push(row);
    }
    print_table(&rows);
    println!("{}", json!({ "chaos": rows }));
    let broken = rows.iter().any(|r| {
        [
            "hung",
            "no_answer",
            "applied_twice",
            "applied_but_retryable",
            "ok_never_applied",
        ]
        .iter()
        .any(|k| r[*k].as_u64() != Some(0))
    });
    let faultless = rows
        .iter()
        .any(|r| r["faults_injected"].as_u64() == Some(0));
    if faultless {
        bail!("a cell injected no faults: its figures prove nothing");
    }
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Applications per comment body, as the upstream saw them.
type Applied = Arc<Mutex<HashMap<String, u32>>>;

/// An upstream that applies comments and counts each unique body.
async fn counting_upstream() -> Result<(String, Applied, tokio::task::JoinHandle<()>)> {
    let applied: Applied = Arc::default();
    async fn comment(
        State(applied): State<Applied>,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let key = body["body"].as_str().unwrap_or_default().to_owned();
        *applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        (StatusCode::CREATED, Json(json!({ "id": key })))
    }
    let app = Router::new()
        .route("/api/issues/{id}/comments", post(comment))
        .with_state(applied.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, applied, task))
}

async fn run_cell(args: &ChaosArgs, cell: &Cell) -> Result<Value> {
    let (url, applied, upstream) = counting_upstream().await?;
    let dir = std::env::temp_dir().join(format!(
        "pcb-chaos-{}-{}",
        std::process::id(),
        crate::bench::rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    let sandbox = Arc::new(BwrapSandbox::create_with(&dir, &crate::bench::load_mounts()?).await?);
    let chaos = Arc::new(ChaosRunner::new(sandbox.clone(), cell.rate));
    let result = async {
        let client = Upstream::new(
            &url,
            Secret::new("chaos-key".into()),
            None,
            Duration::from_secs(30),
        )?;
        let mut config = BridgeConfig::new(args.gateway_bin.clone(), dir.clone(), client);
        config.transport = match cell.transport.as_str() {
            "stream" => TransportKind::Stream,
            "oneshot" => TransportKind::OneShot,
            "posix" => TransportKind::Posix,
            other => bail!("unknown transport {other}"),
        };
        config.max_queue_depth = 256;
        chaos.arm(cell.from_start);
        let bridge = Bridge::start(chaos.clone(), config)
            .await
            .context("deploying through the faults")?;
        chaos.arm(true);
        // The agent's own exec is not the bridge's channel: it goes straight in.
        let outcomes = mutations(sandbox.as_ref(), &bridge.agent_env(), &dir, args).await;
        chaos.arm(false);
        bridge.stop().await?;
        outcomes
    }
    .await;
    sandbox.destroy().await;
    upstream.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let outcomes = result?;
    let applied = applied.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(tally(cell, &outcomes, &applied, &chaos.injected()))
}

/// Runs the load generator's mutations inside the sandbox; returns `(key, status)` pairs.
async fn mutations(
    sandbox: &dyn Runner,
    env: &[(String, String)],
    dir: &std::path::Path,
    args: &ChaosArgs,
) -> Result<Vec<(String, i64)>> {
    let exe = std::env::current_exe()?;
    let words = [
        exe.to_string_lossy().into_owned(),
        "load".into(),
        "--mutations".into(),
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--seconds".into(),
        args.seconds.to_string(),
    ];
    let script = format!("exec {}", bridge_host::shell::join(&words));
    let exec = env
        .iter()
        .fold(
            Exec::new(script, Duration::from_secs(args.seconds + 300)),
            |e, (k, v)| e.env(k.clone(), v.clone()),
        )
        .cwd(dir);
    let out = sandbox.exec(exec).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("load output: {text} {}", out.stderr_text()))?;
    let pairs = value["outcomes"].as_array().context("no outcomes")?;
    Ok(pairs
        .iter()
        .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_i64()?)))
        .collect())
}

/// Each request's outcome against the upstream's count of its application.
fn tally(
    cell: &Cell,
    outcomes: &[(String, i64)],
    applied: &HashMap<String, u32>,
    injected: &std::collections::BTreeMap<&'static str, u64>,
) -> Value {
    let count = |pred: &dyn Fn(i64, u32) -> bool| {
        outcomes
            .iter()
            .filter(|(key, status)| pred(*status, applied.get(key).copied().unwrap_or(0)))
            .count()
    };
    let total: u64 = injected.values().sum();
    for (key, status) in outcomes {
        if applied.get(key).copied().unwrap_or(0) >= 2 {
            eprintln!(
                "chaos: {key} (answered {status}) was applied {} times",
                applied[key]
            );
        }
    }
    json!({
        "transport": cell.transport, "rate": cell.rate, "from_start": cell.from_start,
        "requests": outcomes.len(),
        "answered": count(&|s, _| s > 0),
        "ok": count(&|s, _| (200..300).contains(&s)),
        "indeterminate_409": count(&|s, _| s == 409),
        "retryable_5xx": count(&|s, _| s >= 500),
        "hung": count(&|s, _| s == HUNG),
        "no_answer": count(&|s, _| s == NO_ANSWER),
        "applied_twice": count(&|_, n| n >= 2),
        "applied_but_retryable": count(&|s, n| n >= 1 && s >= 500),
        "ok_never_applied": count(&|s, n| n == 0 && (200..300).contains(&s)),
        "faults_injected": total,
        "faults": injected,
    })
}

fn print_table(rows: &[Value]) {
    println!("| transport | fault rate | faults from | requests | answered | 2xx | 409 indeterminate | 5xx (not applied) | hung | applied twice | applied but reported retryable | 2xx never applied | faults injected ({}) |", FAULTS.join(" / "));
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let faults: Vec<String> = FAULTS.iter().map(|f| r["faults"][*f].to_string()).collect();
        println!(
            "| {} | {:.0} % | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            r["transport"].as_str().unwrap_or("?"),
            r["rate"].as_f64().unwrap_or(0.0) * 100.0,
            if r["from_start"].as_bool() == Some(true) {
                "first exec"
            } else {
                "after start-up"
            },
            r["requests"],
            r["answered"],
            r["ok"],
            r["indeterminate_409"],
            r["retryable_5xx"],
            r["hung"],
            r["applied_twice"],
            r["applied_but_retryable"],
            r["ok_never_applied"],
            r["faults_injected"],
            faults.join(" / "),
        );
    }
}
