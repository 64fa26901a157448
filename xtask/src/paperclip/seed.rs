//! Seeding what an e2e run needs: agent key, an issue, and a live heartbeat run bound to it.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::http::{snippet, Api};

/// How long the seeded run's process idles. The run must stay `running` while the suite
/// works: a document write on an in_progress issue needs the checkout owned by a live run.
pub const IDLE_SECONDS: u32 = 4 * 3600;
/// Bound on the queued run becoming `running`.
const RUN_START_LIMIT: Duration = Duration::from_secs(60);

/// Everything seeded (the key is a secret: callers write it to a 0600 file, never print it).
pub struct Seeded {
    pub company_id: String,
    pub agent_id: String,
    pub issue_id: String,
    pub run_id: String,
    pub key: String,
}

/// Seeds on the server at `port`; `old_run` (from a previous seed) is cancelled first.
pub fn seed(port: u16, old_run: Option<&str>) -> Result<Seeded> {
    let board = Api::board(port);
    if let Some(run) = old_run {
        // Best effort: tidies the previous seed's idle process; a failure changes nothing.
        let _ = board.post(&format!("/api/heartbeat-runs/{run}/cancel"), &json!({}));
    }
    let company_id = first_id(&board, "/api/companies").context("seed: company id")?;
    let agent_id = first_id(&board, &format!("/api/companies/{company_id}/agents"))
        .context("seed: agent id")?;
    make_agent_idle(&board, &agent_id)?;
    let key = create_key(&board, &agent_id)?;
    let issue_id = create_issue(port, &key, &company_id, &agent_id)?;
    let run_id = wake(&board, &agent_id, &issue_id)?;
    wait_running(&board, &run_id)?;
    Ok(Seeded {
        company_id,
        agent_id,
        issue_id,
        run_id,
        key,
    })
}

fn first_id(api: &Api, path: &str) -> Result<String> {
    let list = api.get(path)?.json_ok(path)?;
    string_field(list.get(0).unwrap_or(&Value::Null), "id")
        .with_context(|| format!("{path} returned no entries"))
}

fn string_field(value: &Value, name: &str) -> Option<String> {
    value.get(name)?.as_str().map(str::to_owned)
}

/// The default adapter (claude_local) would start the bundled Claude CLI, which cannot reach a
/// model here and does unpredictable things to the issue; a `process` adapter that sleeps keeps
/// the run `running` and the issue untouched.
fn make_agent_idle(board: &Api, agent_id: &str) -> Result<()> {
    let body = json!({
        "adapterType": "process",
        "adapterConfig": {"command": "sleep", "args": [IDLE_SECONDS.to_string()]},
    });
    board
        .patch(&format!("/api/agents/{agent_id}"), &body)?
        .json_ok("seed: switching the agent to an idle process adapter")?;
    Ok(())
}

fn create_key(board: &Api, agent_id: &str) -> Result<String> {
    let reply = board.post(
        &format!("/api/agents/{agent_id}/keys"),
        &json!({"name": "bridge-e2e"}),
    )?;
    // Not json_ok: its error text would quote the body, and a 2xx body holds the key.
    if !(200..300).contains(&reply.status) {
        bail!("seed: creating an agent API key: HTTP {}", reply.status);
    }
    let json: Value = serde_json::from_str(&reply.body).context("seed: key answer is not JSON")?;
    string_field(&json, "token").context("seed: key answer has no token")
}

/// Assigned but in `backlog`: assignment to a `todo` issue would wake the agent by itself,
/// and a run we did not ask for is one we cannot name.
fn create_issue(port: u16, key: &str, company_id: &str, agent_id: &str) -> Result<String> {
    let agent = Api {
        port,
        bearer: Some(key.to_owned()),
        run_id: None,
    };
    let body = json!({
        // Unique: Paperclip answers a repeated create with the existing issue (200, not 201).
        "title": format!("bridge e2e {}", unique_suffix()),
        "description": "Seeded by `cargo xtask paperclip` for the bridge's end-to-end suite.",
        "assigneeAgentId": agent_id,
        "status": "backlog",
    });
    let issue = agent
        .post(&format!("/api/companies/{company_id}/issues"), &body)?
        .json_ok("seed: creating the issue")?;
    string_field(&issue, "id").context("seed: issue answer has no id")
}

fn wake(board: &Api, agent_id: &str, issue_id: &str) -> Result<String> {
    let body = json!({"source": "on_demand", "payload": {"issueId": issue_id}});
    let run = board
        .post(&format!("/api/agents/{agent_id}/wakeup"), &body)?
        .json_ok("seed: waking the agent for the issue")?;
    string_field(&run, "id").with_context(|| {
        format!(
            "seed: wakeup answer has no run id: {}",
            snippet(&run.to_string())
        )
    })
}

/// Nanoseconds since the epoch: distinct for every seed on this machine.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// Waits (bounded) for the run to leave `queued`; anything but `running` is an error.
fn wait_running(board: &Api, run_id: &str) -> Result<()> {
    let deadline = Instant::now() + RUN_START_LIMIT;
    loop {
        let run = board
            .get(&format!("/api/heartbeat-runs/{run_id}"))?
            .json_ok("seed: reading the run")?;
        match run["status"].as_str().unwrap_or_default() {
            "running" => return Ok(()),
            "queued" if Instant::now() < deadline => sleep(Duration::from_millis(500)),
            status => bail!(
                "seed: run {run_id} is {status:?}, expected \"running\": {}",
                snippet(&run.to_string())
            ),
        }
    }
}
