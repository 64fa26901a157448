//! `paperclip-bridge-bench load`: the benchmark's load generator. It runs inside the
//! sandbox, like an agent, and prints what it measured as one JSON line.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Requests one after another (ignored with --concurrency).
    #[arg(long, default_value_t = 60)]
    pub sequential: usize,
    /// Callers at once, each looping for --seconds.
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Unique mutations (POST a comment with a unique body) instead of reads; prints each
    /// request's key and outcome, for the chaos harness to count against the upstream.
    #[arg(long)]
    pub mutations: bool,
    /// Large bodies instead of reads: upload an attachment of this many bytes, then
    /// download one as large, `--repeat` times, each checked byte by byte; prints the
    /// seconds each transfer took.
    #[arg(long, value_name = "BYTES")]
    pub large: Option<usize>,
    /// Transfers each way with --large.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// The outcome recorded for a request with no answer within the client's bound.
pub const HUNG: i64 = -1;
/// The outcome recorded for a request that failed without an HTTP answer.
pub const NO_ANSWER: i64 = 0;
/// How long a mutation's caller waits for its answer before counting it as hung.
const MUTATION_BOUND: Duration = Duration::from_secs(120);

pub async fn load(args: LoadArgs) -> Result<ExitCode> {
    let base = std::env::var("PAPERCLIP_API_URL").context("PAPERCLIP_API_URL is not set")?;
    let token = std::env::var("PAPERCLIP_API_KEY").context("PAPERCLIP_API_KEY is not set")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    if args.mutations {
        return mutations(&base, &token, &args).await;
    }
    if let Some(bytes) = args.large {
        return crate::large::large(&client, &base, &token, bytes, args.repeat).await;
    }
    let url = format!("{base}/api/agents/me");
    let started = Instant::now();
    let (latencies, errors) = match args.concurrency {
        None => caller(&client, &url, &token, Some(args.sequential), None).await,
        Some(c) => {
            let until = Instant::now() + Duration::from_secs(args.seconds);
            let tasks: Vec<_> = (0..c)
                .map(|_| {
                    let (client, url, token) = (client.clone(), url.clone(), token.clone());
                    tokio::spawn(
                        async move { caller(&client, &url, &token, None, Some(until)).await },
                    )
                })
                .collect();
            let mut all = (Vec::new(), 0);
            for task in tasks {
                let (l, e) = task.await?;
                all.0.extend(l);
                all.1 += e;
            }
            all
        }
    };
    let line = serde_json::json!({
        "latencies_ms": latencies,
        "errors": errors,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// Calls until `count` requests or `until`; every answer must be a 200 with a body.
async fn caller(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    count: Option<usize>,
    until: Option<Instant>,
) -> (Vec<f64>, usize) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut done = 0;
    loop {
        if count.is_some_and(|n| done >= n) || until.is_some_and(|t| Instant::now() >= t) {
            return (latencies, errors);
        }
        let started = Instant::now();
        let ok = match client.get(url).bearer_auth(token).send().await {
            Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| !b.is_empty()),
            _ => false,
        };
        if ok {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
        done += 1;
    }
}

/// `--mutations`: callers each POST unique comments until `--seconds` pass; one JSON line
/// of `[key, status]` pairs (status [`HUNG`] or [`NO_ANSWER`] when there was none).
async fn mutations(base: &str, token: &str, args: &LoadArgs) -> Result<ExitCode> {
    let client = reqwest::Client::builder().timeout(MUTATION_BOUND).build()?;
    let url = format!("{base}/api/issues/chaos/comments");
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency.unwrap_or(1))
        .map(|caller| {
            let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 0u64;
                while Instant::now() < until {
                    let key = format!("{}-{caller}-{n}", std::process::id());
                    n += 1;
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&serde_json::json!({ "body": key }))
                        .send()
                        .await;
                    let status = match sent {
                        Ok(r) => i64::from(r.status().as_u16()),
                        Err(e) if e.is_timeout() => HUNG,
                        Err(_) => NO_ANSWER,
                    };
                    outcomes.push((key, status));
                }
                outcomes
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    let line = serde_json::json!({ "outcomes": all, "seconds": started.elapsed().as_secs_f64() });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
