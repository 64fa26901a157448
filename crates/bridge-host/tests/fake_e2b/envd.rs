//! The fake envd's `process.Process` service over Connect with the JSON codec: `Start`
//! (server stream: start, data, keepalive and end events, then the end-of-stream message),
//! `SendInput`, `CloseStdin`, `SendSignal`, `List`. Processes outlive a client that goes
//! away, as envd's do; `Connect-Timeout-Ms` bounds a process's life. Signals reach the
//! process only, not its children, as envd's do.

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as St;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::State;

/// A process the fake runs.
pub struct Proc {
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    cmd: String,
    args: Vec<String>,
}

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/process.Process/Start", post(start))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/List", post(list))
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
}

/// A unary Connect error.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"code": code, "message": message}).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn event(value: Value) -> Bytes {
    envelope(0, json!({"event": value}).to_string().as_bytes())
}

/// The one message of a server-streaming request.
fn one_message(body: &[u8]) -> Option<Value> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    if body[0] != 0 || body.len() != 5 + len {
        return None;
    }
    serde_json::from_slice(&body[5..]).ok()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn start(St(state): St<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    state.count("Start");
    if let Err(r) = state.envd_allowed(&headers) {
        return r;
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    if ct != Some("application/connect+json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unknown",
            "want application/connect+json",
        );
    }
    let Some(request) = one_message(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "not one envelope of JSON",
        );
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    match spawn(&state, &request) {
        Ok((child, pid)) => {
            let deadline = header_u64(&headers, "connect-timeout-ms")
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis);
            let keepalive = header_u64(&headers, "keepalive-ping-interval")
                .filter(|s| *s > 0)
                .map_or(Duration::from_secs(90), Duration::from_secs);
            tokio::spawn(run(state.clone(), child, pid, tx, deadline, keepalive));
        }
        Err(message) => {
            let end = json!({"error": {"code": "internal", "message": message}}).to_string();
            let _ = tx.try_send(envelope(2, end.as_bytes()));
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [("content-type", "application/connect+json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Starts the process the request describes, in its own process group, with a clean
/// environment plus its `envs` (a sandbox has nothing of the host's).
fn spawn(state: &Arc<State>, request: &Value) -> Result<(Child, u32), String> {
    let process = &request["process"];
    let cmd = process["cmd"].as_str().ok_or("process.cmd is required")?;
    let args: Vec<String> = process["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let envs: HashMap<String, String> = process["envs"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let cwd = process["cwd"]
        .as_str()
        .map_or(state.home.clone(), Into::into);
    // envd's default: stdin open unless `stdin: false` (older envd had no field).
    let with_stdin = request["stdin"].as_bool().unwrap_or(true);
    let mut command = tokio::process::Command::new(cmd);
    command
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &state.home)
        .envs(envs)
        .current_dir(cwd)
        .process_group(0)
        .stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("error starting process: {e}"))?;
    let pid = child.id().ok_or("the process is gone")?;
    let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
    let proc = Proc {
        stdin,
        cmd: cmd.to_owned(),
        args,
    };
    state.procs.lock().unwrap().insert(pid, proc);
    Ok((child, pid))
}

/// Streams the process's events until it ends (or its deadline), then forgets it.
async fn run(
    state: Arc<State>,
    mut child: Child,
    pid: u32,
    tx: mpsc::Sender<Bytes>,
    deadline: Option<Duration>,
    keepalive: Duration,
) {
    let send = |b: Bytes| {
        let tx = tx.clone();
        async move { drop(tx.send(b).await) }
    };
    send(event(json!({"start": {"pid": pid}}))).await;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (mut obuf, mut ebuf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let end_at = deadline.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    let mut status = None;
    let mut drain_until = far;
    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        tokio::select! {
            n = async { out.as_mut().unwrap().read(&mut obuf).await }, if out.is_some() => match n {
                Ok(n) if n > 0 => send(data("stdout", &obuf[..n])).await,
                _ => out = None,
            },
            n = async { err.as_mut().unwrap().read(&mut ebuf).await }, if err.is_some() => match n {
                Ok(n) if n > 0 => send(data("stderr", &ebuf[..n])).await,
                _ => err = None,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                // A background grandchild may hold the pipes: give them a second.
                drain_until = tokio::time::Instant::now() + Duration::from_secs(1);
            },
            _ = tokio::time::sleep_until(drain_until) => break,
            _ = tokio::time::sleep_until(end_at.unwrap_or(far)) => {
                signal_pid(pid, rustix::process::Signal::KILL);
                let _ = child.wait().await;
                state.procs.lock().unwrap().remove(&pid);
                let end = json!({"error": {"code": "deadline_exceeded", "message": "the process's deadline passed"}});
                send(envelope(2, end.to_string().as_bytes())).await;
                return;
            },
            _ = tokio::time::sleep(keepalive) => send(event(json!({"keepalive": {}}))).await,
        }
    }
    state.procs.lock().unwrap().remove(&pid);
    send(event(json!({"end": end_event(status)}))).await;
    send(envelope(2, b"{}")).await;
}

fn data(stream: &str, bytes: &[u8]) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    event(json!({"data": {stream: b64}}))
}

/// Go's `ProcessState` words, with proto3 JSON's omitted defaults.
fn end_event(status: Option<std::io::Result<std::process::ExitStatus>>) -> Value {
    use std::os::unix::process::ExitStatusExt as _;
    match status.and_then(Result::ok) {
        Some(s) if s.code().is_some() => {
            let code = s.code().unwrap_or(0);
            let mut end = json!({"exited": true, "status": format!("exit status {code}")});
            if code != 0 {
                end["exitCode"] = json!(code);
            }
            end
        }
        Some(s) => {
            let name = match s.signal() {
                Some(9) => "killed",
                Some(15) => "terminated",
                _ => "hangup",
            };
            json!({"exitCode": -1, "status": format!("signal: {name}")})
        }
        None => json!({"exitCode": -1, "status": "unknown"}),
    }
}

/// Signals the process only, as envd does (`cmd.Process.Signal`): its children live on.
fn signal_pid(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Signals the process and everything it started (the end of the whole sandbox).
fn signal_group(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Kills every process (a sandbox's end).
pub fn kill_all(state: &State) {
    let pids: Vec<u32> = state.procs.lock().unwrap().keys().copied().collect();
    for pid in pids {
        signal_group(pid, rustix::process::Signal::KILL);
    }
}

/// The unary request's JSON and the pid it selects, or the error to answer.
fn unary(state: &State, headers: &HeaderMap, body: &[u8]) -> Result<(Value, u32), Response> {
    state.envd_allowed(headers)?;
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    if ct != Some("application/json") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unknown",
            "want application/json",
        ));
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "invalid_argument", "not JSON"))?;
    let pid = request["process"]["pid"].as_u64().unwrap_or(0) as u32;
    if !state.procs.lock().unwrap().contains_key(&pid) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("process with pid {pid} not found"),
        ));
    }
    Ok((request, pid))
}

fn stdin_of(state: &State, pid: u32) -> Option<Arc<tokio::sync::Mutex<Option<ChildStdin>>>> {
    state
        .procs
        .lock()
        .unwrap()
        .get(&pid)
        .map(|p| p.stdin.clone())
}

fn ok() -> Response {
    ([("content-type", "application/json")], "{}").into_response()
}

async fn send_input(St(state): St<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    state.count("SendInput");
    let (request, pid) = match unary(&state, &headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(text) = request["input"]["stdin"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "input.stdin is required",
        );
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "stdin is not base64",
        );
    };
    let Some(stdin) = stdin_of(&state, pid) else {
        return error(StatusCode::NOT_FOUND, "not_found", "gone");
    };
    let mut stdin = stdin.lock().await;
    match stdin.as_mut() {
        Some(pipe) => match pipe.write_all(&bytes).await {
            Ok(()) => ok(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("error writing to stdin: {e}"),
            ),
        },
        None => error(
            StatusCode::BAD_REQUEST,
            "failed_precondition",
            "stdin is closed or was not enabled",
        ),
    }
}

async fn close_stdin(St(state): St<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    state.count("CloseStdin");
    let pid = match unary(&state, &headers, &body) {
        Ok((_, pid)) => pid,
        Err(r) => return r,
    };
    if let Some(stdin) = stdin_of(&state, pid) {
        stdin.lock().await.take();
    }
    ok()
}

async fn send_signal(St(state): St<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    state.count("SendSignal");
    let (request, pid) = match unary(&state, &headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let signal = match request["signal"].as_str() {
        Some("SIGNAL_SIGKILL") => rustix::process::Signal::KILL,
        Some("SIGNAL_SIGTERM") => rustix::process::Signal::TERM,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "unknown signal",
            )
        }
    };
    signal_pid(pid, signal);
    ok()
}

async fn list(St(state): St<Arc<State>>, headers: HeaderMap) -> Response {
    state.count("List");
    if let Err(r) = state.envd_allowed(&headers) {
        return r;
    }
    let procs = state.procs.lock().unwrap();
    let list: Vec<Value> = procs
        .iter()
        .map(|(pid, p)| json!({"pid": pid, "config": {"cmd": p.cmd, "args": p.args, "envs": {}}}))
        .collect();
    (
        [("content-type", "application/json")],
        json!({"processes": list}).to_string(),
    )
        .into_response()
}
