//! A fake E2B: the control plane and envd in one local HTTP server (HTTP/1.1 and h2c, as
//! the SDKs speak), running "sandbox" processes as local processes in their own process
//! groups. It implements what the bridge uses and what E2B's official Python SDK needs for
//! commands and files; `tests/e2b.rs` proves it with that SDK before our tests use it.
//! Counts every call, so tests can check what crossed the wire.

// Handlers answer errors early as whole responses; their size does not matter here.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err
)]

mod control;
mod envd;
mod files;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// The API key the fake control plane accepts.
pub const API_KEY: &str = "e2b_0123456789abcdef0123456789abcdef";
/// The envd version the fake reports (new enough for `CloseStdin` and octet-stream).
pub const ENVD_VERSION: &str = "0.6.1";

/// One fake sandbox.
#[derive(Debug, Clone)]
pub struct FakeSandbox {
    pub template: String,
    pub token: String,
    pub alive: bool,
    pub ttl_secs: u64,
    pub renewals: usize,
}

#[derive(Default)]
pub struct State {
    pub sandboxes: Mutex<HashMap<String, FakeSandbox>>,
    pub calls: Mutex<HashMap<String, usize>>,
    procs: Mutex<HashMap<u32, envd::Proc>>,
    /// Where processes start when no cwd is given (the sandbox user's home).
    pub home: PathBuf,
    /// Debug mode: no control plane, no token (E2B_DEBUG).
    pub debug: bool,
}

impl State {
    fn count(&self, call: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(call.to_owned())
            .or_default() += 1;
    }

    /// The sandbox a request to envd is for, if it may be served: its id header names a
    /// live sandbox and the access token matches (E2B's proxy answers 502 for a dead one).
    fn envd_allowed(&self, headers: &HeaderMap) -> Result<(), Response> {
        if self.debug {
            return Ok(());
        }
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let sandboxes = self.sandboxes.lock().unwrap();
        let Some(sandbox) = sandboxes.get(header("e2b-sandbox-id")) else {
            return Err(json_error(
                StatusCode::BAD_GATEWAY,
                r#"{"code":502,"message":"sandbox not found"}"#,
            ));
        };
        if !sandbox.alive {
            return Err(json_error(
                StatusCode::BAD_GATEWAY,
                r#"{"code":502,"message":"sandbox not found"}"#,
            ));
        }
        if header("x-access-token") != sandbox.token {
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                r#"{"code":401,"message":"invalid access token"}"#,
            ));
        }
        Ok(())
    }
}

fn json_error(status: StatusCode, body: &'static str) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// A running fake E2B.
pub struct FakeE2b {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    _home: tempfile::TempDir,
}

impl FakeE2b {
    /// Control plane and envd on one port of 127.0.0.1.
    pub async fn start() -> FakeE2b {
        Self::start_with(false).await
    }

    /// In debug mode: envd only, no tokens.
    pub async fn start_debug() -> FakeE2b {
        Self::start_with(true).await
    }

    async fn start_with(debug: bool) -> FakeE2b {
        let home = tempfile::tempdir().unwrap();
        let state = Arc::new(State {
            home: home.path().to_path_buf(),
            debug,
            ..State::default()
        });
        let app: Router = control::routes()
            .merge(envd::routes())
            .merge(files::routes())
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeE2b {
            addr,
            state,
            task,
            _home: home,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment E2B's SDKs (and our runner) read to reach this fake.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("E2B_API_URL", self.url()), ("E2B_SANDBOX_URL", self.url())];
        if self.state.debug {
            env.push(("E2B_DEBUG", "true".into()));
        } else {
            env.push(("E2B_API_KEY", API_KEY.into()));
        }
        env
    }

    /// An `E2bConfig` for this fake.
    pub fn config(&self) -> bridge_host::runner::E2bConfig {
        let env = self.env();
        bridge_host::runner::E2bConfig::from_lookup(|name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })
    }

    /// How many times `call` (e.g. `POST /files`, `Start`) was made.
    pub fn calls(&self, call: &str) -> usize {
        self.state
            .calls
            .lock()
            .unwrap()
            .get(call)
            .copied()
            .unwrap_or(0)
    }

    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        self.state.sandboxes.lock().unwrap().get(id).cloned()
    }

    /// Processes still running.
    pub fn live_processes(&self) -> usize {
        self.state.procs.lock().unwrap().len()
    }

    /// Kills every process still running (as a sandbox's end would).
    pub fn kill_all(&self) {
        envd::kill_all(&self.state);
    }
}

impl Drop for FakeE2b {
    fn drop(&mut self) {
        envd::kill_all(&self.state);
        self.task.abort();
    }
}
