//! `cargo xtask paperclip up|seed|down|status`: a real Paperclip server for the e2e suite.

mod http;
mod install;
mod procs;
mod seed;
mod server;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::progress::Steps;

const USAGE: &str = "usage: cargo xtask paperclip <command>

commands:
  up       install (once) and start a Paperclip server, or reuse a healthy one, then seed
           a fresh issue and heartbeat run; writes target/paperclip/facts.json
  seed     seed a fresh issue and run on the running server (updates facts.json)
  down     stop the server and everything it started; removes facts.json and the key file
  status   say whether it runs, and print facts.json

facts.json: apiUrl, port, companyId, agentId, issueId, runId, keyFile (0600 file holding
the agent API key), pid, pgid, log, user, dataDir. Agent requests carry
`Authorization: Bearer <key>` and `X-Paperclip-Run-Id: <runId>`; the run stays `running`
(its process idles) until `down` or the next seed.
";

/// Lines of the server log quoted when a step fails.
const LOG_TAIL_LINES: usize = 40;

pub fn main(args: &[String]) -> Result<()> {
    let paths = Paths::new();
    match args.first().map(String::as_str) {
        Some("up") => up(&paths),
        Some("seed") => reseed(&paths),
        Some("down") => down(&paths),
        Some("status") => status(&paths),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown paperclip command {other:?}\n\n{USAGE}"),
    }
}

/// Everything lives under target/paperclip/.
struct Paths {
    root: PathBuf,
}

impl Paths {
    fn new() -> Self {
        Paths {
            root: crate::target_dir().join("paperclip"),
        }
    }
    fn install(&self) -> PathBuf {
        self.root.join("install")
    }
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    fn log(&self) -> PathBuf {
        self.root.join("server.log")
    }
    fn npm_log(&self) -> PathBuf {
        self.root.join("npm-install.log")
    }
    fn facts(&self) -> PathBuf {
        self.root.join("facts.json")
    }
    fn key_file(&self) -> PathBuf {
        self.root.join("agent-key")
    }
}

fn up(paths: &Paths) -> Result<()> {
    let (pid, port, user, mut steps) = match running_server(paths) {
        Some((pid, port, user)) => {
            println!("paperclip: reusing the healthy server on port {port} (pid {pid})");
            (pid, port, user, Steps::new("paperclip", 1))
        }
        None => {
            let mut steps = Steps::new("paperclip", START_STEPS + 1);
            let (pid, port, user) = start(paths, &mut steps)?;
            (pid, port, user, steps)
        }
    };
    steps.next("seeding a fresh issue and heartbeat run");
    let old_run = read_facts(paths).and_then(|facts| facts["runId"].as_str().map(str::to_owned));
    seed_and_record(paths, pid, port, &user, old_run.as_deref())
}

fn reseed(paths: &Paths) -> Result<()> {
    let Some((pid, port, user)) = running_server(paths) else {
        bail!("no healthy Paperclip server is running: use `cargo xtask paperclip up`");
    };
    let old_run = read_facts(paths).and_then(|facts| facts["runId"].as_str().map(str::to_owned));
    seed_and_record(paths, pid, port, &user, old_run.as_deref())
}

/// pid, port and user of the server that facts.json names, if it is alive and healthy.
fn running_server(paths: &Paths) -> Option<(u32, u16, String)> {
    let facts = read_facts(paths)?;
    let pid = u32::try_from(facts["pid"].as_u64()?).ok()?;
    let port = u16::try_from(facts["port"].as_u64()?).ok()?;
    let user = facts["user"].as_str()?.to_owned();
    (procs::alive(pid) && server::healthy(port)).then_some((pid, port, user))
}

/// The steps of [`start`], each announced with its number.
const START_STEPS: usize = 5;

/// Stops leftovers, installs if needed, starts the server and waits for it.
fn start(paths: &Paths, steps: &mut Steps) -> Result<(u32, u16, String)> {
    steps.next("stopping what an earlier run left");
    stop_recorded(paths)?;
    steps.next("installing Node and Paperclip with npm (once; a few minutes)");
    let install = install::ensure(&paths.install(), &paths.npm_log()).context("step: install")?;
    steps.next("preparing the user and data directory");
    let user = install::run_as().context("step: choosing the user to run the server as")?;
    install::check_readable(&user, &install.paperclip_cli()).context("step: install access")?;
    std::fs::create_dir_all(paths.data()).context("step: creating the data dir")?;
    install::give_to(&user, &paths.data()).context("step: data dir ownership")?;
    let started = Instant::now();
    steps.next(&format!(
        "starting the server as {} (log: {})",
        user.name,
        paths.log().display()
    ));
    let pid = server::spawn(&install, &user, &paths.data(), &paths.log())
        .with_context(|| failure(paths, "starting the server"))?;
    // Recorded at once, so `down` can stop it even if waiting fails.
    write_facts(
        paths,
        &json!({"pid": pid, "pgid": pid, "user": user.name, "log": paths.log()}),
    )?;
    steps.next("waiting for the server to be healthy (migrations, about 30 s)");
    let port = server::wait_ready(pid, &paths.log())
        .with_context(|| failure(paths, "waiting for health"))?;
    println!(
        "paperclip: healthy on port {port} after {:.1?}",
        started.elapsed()
    );
    Ok((pid, port, user.name))
}

fn seed_and_record(
    paths: &Paths,
    pid: u32,
    port: u16,
    user: &str,
    old: Option<&str>,
) -> Result<()> {
    let seeded = seed::seed(port, old).with_context(|| failure(paths, "seeding"))?;
    write_secret(&paths.key_file(), &seeded.key).context("step: writing the key file")?;
    let facts = json!({
        "apiUrl": format!("http://127.0.0.1:{port}"),
        "port": port,
        "companyId": seeded.company_id,
        "agentId": seeded.agent_id,
        "issueId": seeded.issue_id,
        "runId": seeded.run_id,
        "keyFile": paths.key_file(),
        "pid": pid,
        "pgid": pid,
        "log": paths.log(),
        "user": user,
        "dataDir": paths.data(),
    });
    write_facts(paths, &facts)?;
    println!("paperclip: facts in {}", paths.facts().display());
    println!("{}", serde_json::to_string_pretty(&facts)?);
    Ok(())
}

fn down(paths: &Paths) -> Result<()> {
    if stop_recorded(paths)? {
        println!("paperclip: stopped");
    } else {
        println!("paperclip: not running");
    }
    Ok(())
}

/// Stops the recorded process group and its descendants; removes facts and key.
/// Returns whether there was anything recorded.
fn stop_recorded(paths: &Paths) -> Result<bool> {
    let Some(facts) = read_facts(paths) else {
        return Ok(false);
    };
    let pgid = facts["pgid"].as_u64().and_then(|id| u32::try_from(id).ok());
    // The server's command line names the data dir (`test-drive -d DIR`), as does PostgreSQL's.
    let marker = paths.data().display().to_string();
    if let Some(pgid) = pgid.filter(|&pgid| procs::family_mentions(pgid, &marker)) {
        let killed = procs::stop_family(pgid, &[pgid]).context("stopping the server")?;
        if killed > 0 {
            println!("paperclip: {killed} process(es) ignored SIGTERM and were killed");
        }
    }
    remove_if_present(&paths.key_file())?;
    remove_if_present(&paths.facts())?;
    Ok(true)
}

fn status(paths: &Paths) -> Result<()> {
    let Some(facts) = read_facts(paths) else {
        println!("paperclip: not running (no {})", paths.facts().display());
        return Ok(());
    };
    let state = match running_server(paths) {
        Some(_) => "running and healthy",
        None => "NOT healthy (stale facts; `down` then `up`)",
    };
    println!("paperclip: {state}");
    println!("{}", serde_json::to_string_pretty(&facts)?);
    Ok(())
}

/// "step: X failed", plus the server log's tail.
fn failure(paths: &Paths, step: &str) -> String {
    format!(
        "step: {step}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}\n---",
        paths.log().display(),
        server::log_tail(&paths.log(), LOG_TAIL_LINES)
    )
}

fn read_facts(paths: &Paths) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(paths.facts()).ok()?).ok()
}

fn write_facts(paths: &Paths, facts: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(facts)? + "\n";
    std::fs::write(paths.facts(), text).context("writing facts.json")
}

/// Writes `secret` to a fresh file readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<()> {
    remove_if_present(path)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
