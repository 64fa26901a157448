//! The demo's scripted agent. It runs inside the sandbox and knows only what a real agent
//! knows: `PAPERCLIP_API_URL` and `PAPERCLIP_API_KEY` (the bridge token).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DemoAgentArgs {
    /// The upstream's address on the host, which the agent must NOT be able to reach.
    #[arg(long)]
    pub host_url: String,
}

/// One scripted call and the status it must get.
struct Step {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: u16,
    why: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        method: "GET",
        path: "/api/agents/me",
        body: None,
        expect: 200,
        why: "allowed: who am I",
    },
    Step {
        method: "POST",
        path: "/api/issues/DEMO-1/comments",
        body: Some(r#"{"body":"hello from the sandbox"}"#),
        expect: 201,
        why: "allowed: post a comment",
    },
    Step {
        method: "GET",
        path: "/api/attachments/a-1/content",
        body: None,
        expect: 200,
        why: "allowed: binary download",
    },
    Step {
        method: "GET",
        path: "/api/companies",
        body: None,
        expect: 403,
        why: "denied: not on the route allowlist",
    },
    Step {
        method: "DELETE",
        path: "/api/issues/DEMO-1",
        body: None,
        expect: 403,
        why: "denied: agents may not delete issues",
    },
];

pub async fn agent(args: DemoAgentArgs) -> Result<ExitCode> {
    let base = std::env::var("PAPERCLIP_API_URL").context("PAPERCLIP_API_URL is not set")?;
    let token = std::env::var("PAPERCLIP_API_KEY").context("PAPERCLIP_API_KEY is not set")?;
    let mut ok = isolation_check(&args.host_url).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    println!("agent: calls through the bridge at {base}:");
    for step in STEPS {
        ok &= call(&client, &base, &token, step).await;
    }
    let bad_token = client
        .get(format!("{base}/api/agents/me"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .map(|r| r.status().as_u16());
    let refused = matches!(bad_token, Ok(401));
    println!(
        "  {} GET /api/agents/me with a wrong token -> {:?} (gateway refuses: 401)",
        mark(refused),
        bad_token.map_err(|e| e.to_string())
    );
    ok &= refused;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The sandbox must not reach the host's loopback directly.
async fn isolation_check(host_url: &str) -> bool {
    let addr = host_url.trim_start_matches("http://");
    let attempt =
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await;
    let isolated = !matches!(attempt, Ok(Ok(_)));
    let what = match attempt {
        Ok(Ok(_)) => "CONNECTED (the sandbox is not isolated!)".to_owned(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "timed out".to_owned(),
    };
    println!("agent: direct connection to the host's API at {addr}: {what}");
    println!(
        "  {} the sandbox cannot reach the host directly",
        mark(isolated)
    );
    isolated
}

async fn call(client: &reqwest::Client, base: &str, token: &str, step: &Step) -> bool {
    let method = reqwest::Method::from_bytes(step.method.as_bytes()).unwrap_or_default();
    let mut request = client
        .request(method, format!("{base}{}", step.path))
        .bearer_auth(token);
    if let Some(body) = step.body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let started = Instant::now();
    let result = request.send().await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.map(|b| b.len()).unwrap_or(0);
            let good = status == step.expect;
            println!(
                "  {} {} {} -> {status} ({bytes} bytes, {ms:.1} ms) {}",
                mark(good),
                step.method,
                step.path,
                step.why
            );
            good
        }
        Err(e) => {
            println!(
                "  {} {} {} -> error: {e}",
                mark(false),
                step.method,
                step.path
            );
            false
        }
    }
}

fn mark(good: bool) -> &'static str {
    if good {
        "ok  "
    } else {
        "FAIL"
    }
}
