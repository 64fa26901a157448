//! The doctor's end-to-end check: a sandbox as the flags describe it, the bridge deployed
//! into it in front of a throwaway upstream on this machine's loopback, one call from
//! inside through the gateway with the bridge token, an attempt to reach the upstream
//! directly (which must fail), and everything taken down. Each stage has a bound.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bridge_host::deploy::{Bridge, BridgeConfig, BridgeHandle};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::Exec;

use super::probe::{Report, CURL_SCRIPT, ROUTE};
use super::system::kind_name;
use super::{DoctorArgs, Outcome};
use crate::args::SandboxKind;
use crate::demo::upstream::DemoUpstream;
use crate::sandbox::Sandbox;
use crate::signals::Shutdown;

/// Bound for making (or reaching) the sandbox; E2B's create has its own 60 s.
const OPEN_BOUND: Duration = Duration::from_secs(90);
/// Bound for the deployment, retries included.
const DEPLOY_BOUND: Duration = Duration::from_secs(90);
/// Bound for the probe's exec (its own calls are bounded at 20 s and 3 s).
const CALL_BOUND: Duration = Duration::from_secs(40);
/// Bound for stopping the bridge.
const STOP_BOUND: Duration = Duration::from_secs(60);

/// The path the probe tries on the upstream directly; the upstream counts it.
const DIRECT: &str = "/doctor/direct";

const DEBUG_FIX: &str = "run `paperclip-bridge up` with the same flags and RUST_LOG=debug to \
                         see each step (docs/providers.md)";

pub async fn check(args: &DoctorArgs, binary: PathBuf, shutdown: &mut Shutdown) -> Outcome {
    let key = format!("doctor-key-{}", bridge_host::deploy::new_token());
    let upstream = match DemoUpstream::start(key.clone()).await {
        Ok(upstream) => upstream,
        Err(e) => return Outcome::fail(format!("starting the local upstream: {e:#}"), DEBUG_FIX),
    };
    let mut sandbox_args = args.sandbox.clone();
    if args.sandbox.sandbox == SandboxKind::Bwrap {
        // The probe is this binary: shown to the sandbox read-only, as the demo's agent.
        match std::env::current_exe() {
            Ok(exe) => sandbox_args.ro_bind.push(exe),
            Err(e) => return Outcome::fail(format!("finding this program: {e}"), DEBUG_FIX),
        }
    }
    let sandbox = match tokio::time::timeout(OPEN_BOUND, Sandbox::open(&sandbox_args)).await {
        Ok(Ok(sandbox)) => sandbox,
        Ok(Err(e)) => return Outcome::fail(format!("{e:#}"), open_fix(args)),
        Err(_) => {
            return Outcome::fail(bound_text("making the sandbox", OPEN_BOUND), open_fix(args))
        }
    };
    let outcome = tokio::select! {
        outcome = within(&sandbox, args, binary, &upstream, key) => outcome,
        signal = shutdown.recv() => Outcome::fail(format!("{signal} during the check"), "run it again"),
    };
    sandbox.close().await;
    outcome
}

fn open_fix(args: &DoctorArgs) -> String {
    match args.sandbox.sandbox {
        SandboxKind::Bwrap => "see the tools and user namespaces checks above".into(),
        SandboxKind::Exec => "check that `PREFIX sh -c true` works from this shell".into(),
        SandboxKind::E2b => "check E2B_API_KEY (or --e2b-api-key-file) and --e2b-template".into(),
        SandboxKind::Local => DEBUG_FIX.into(),
    }
}

fn bound_text(what: &str, bound: Duration) -> String {
    format!("{what} took longer than {} s", bound.as_secs())
}

/// Deploys, calls and stops; the stop runs whatever the call found.
async fn within(
    sandbox: &Sandbox,
    args: &DoctorArgs,
    binary: PathBuf,
    upstream: &DemoUpstream,
    key: String,
) -> Outcome {
    let transport = match crate::run::transport(args.transport, sandbox) {
        Ok(kind) => kind,
        Err(e) => return Outcome::fail(format!("{e:#}"), "choose another --transport"),
    };
    let client = Upstream::new(
        &upstream.url(),
        Secret::new(key),
        None,
        Duration::from_secs(10),
    );
    let client = match client {
        Ok(client) => client,
        Err(e) => return Outcome::fail(format!("the local upstream: {e}"), DEBUG_FIX),
    };
    let mut config = BridgeConfig::new(binary, sandbox.workdir.clone(), client);
    config.transport = transport;
    let started = Instant::now();
    let deployed =
        tokio::time::timeout(DEPLOY_BOUND, Bridge::start(sandbox.runner.clone(), config));
    let bridge = match deployed.await {
        Ok(Ok(bridge)) => bridge,
        Ok(Err(e)) => return Outcome::fail(format!("deploying the bridge: {e}"), DEBUG_FIX),
        Err(_) => {
            return Outcome::fail(bound_text("deploying the bridge", DEPLOY_BOUND), DEBUG_FIX)
        }
    };
    let deploy_ms = started.elapsed().as_millis();
    let called = call(sandbox, &bridge, upstream).await;
    let stopped = tokio::time::timeout(STOP_BOUND, bridge.stop()).await;
    let called = called.map(|report| judge(&report, upstream, sandbox.kind));
    match (called, stopped) {
        (Err(fail), _) | (Ok(Err(fail)), _) => fail,
        (_, Ok(Err(e))) => Outcome::fail(format!("stopping the bridge: {e}"), DEBUG_FIX),
        (_, Err(_)) => Outcome::fail(bound_text("stopping the bridge", STOP_BOUND), DEBUG_FIX),
        (Ok(Ok(seen)), Ok(Ok(()))) => Outcome::Ok(format!(
            "deployed in {deploy_ms} ms ({} sandbox, {} transport); {seen}; stopped",
            kind_name(sandbox.kind),
            format!("{transport:?}").to_lowercase()
        )),
    }
}

/// Runs the probe in the sandbox with the agent's environment.
async fn call(
    sandbox: &Sandbox,
    bridge: &BridgeHandle,
    upstream: &DemoUpstream,
) -> Result<Report, Outcome> {
    let direct_url = format!("{}{DIRECT}", upstream.url());
    let script = match sandbox.kind {
        SandboxKind::Bwrap | SandboxKind::Local => {
            let exe = std::env::current_exe()
                .map_err(|e| Outcome::fail(format!("finding this program: {e}"), DEBUG_FIX))?;
            format!(
                "exec {} doctor-probe --direct-url {}",
                bridge_host::shell::quote(&exe.to_string_lossy()),
                bridge_host::shell::quote(&direct_url)
            )
        }
        SandboxKind::Exec | SandboxKind::E2b => CURL_SCRIPT.to_owned(),
    };
    let mut exec = Exec::new(script, CALL_BOUND)
        .env("DIRECT_URL", direct_url)
        .cwd(sandbox.workdir.clone());
    exec.env.extend(bridge.agent_env());
    let output = sandbox.runner.exec(exec).await.map_err(|e| {
        Outcome::fail(
            format!("exec of the probe into the sandbox: {e}"),
            DEBUG_FIX,
        )
    })?;
    if !output.success() {
        let why = if output.timed_out {
            "timed out".to_owned()
        } else {
            format!("exit {:?}", output.code)
        };
        return Err(Outcome::fail(
            format!(
                "the probe in the sandbox failed ({why}): {}",
                output.stderr_text()
            ),
            DEBUG_FIX,
        ));
    }
    Ok(Report::parse(&String::from_utf8_lossy(&output.stdout)))
}

/// What the probe and the upstream saw, as the check's text; a failure as its outcome.
fn judge(report: &Report, upstream: &DemoUpstream, kind: SandboxKind) -> Result<String, Outcome> {
    if report.no_curl {
        return Ok("no curl in the sandbox, so no call was made from inside".into());
    }
    let call = report.call.as_deref().unwrap_or("nothing printed");
    if !report.answered() || upstream.count(ROUTE) == 0 {
        return Err(Outcome::fail(
            format!("GET {ROUTE} from inside through the gateway got: {call}"),
            DEBUG_FIX,
        ));
    }
    let direct = report.direct.as_deref().unwrap_or("nothing printed");
    let reached = upstream.count(DIRECT) > 0;
    let isolation = match kind {
        SandboxKind::Local => "no isolation (--sandbox local runs on this machine)".to_owned(),
        _ if reached => {
            return Err(Outcome::fail(
                format!(
                    "the sandbox reached this machine's loopback directly ({} {direct}): it is \
                     not isolated",
                    upstream.url()
                ),
                "use --sandbox bwrap, or give your sandbox its own network namespace (no host \
                 networking)",
            ))
        }
        _ => format!("{} unreachable from inside ({direct})", upstream.url()),
    };
    Ok(format!(
        "GET {ROUTE} from inside through the gateway answered 200; {isolation}"
    ))
}
