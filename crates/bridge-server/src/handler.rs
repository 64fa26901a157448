//! The gateway's one route: every agent call becomes a request file and waits for its answer.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::BodyDataStream;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bridge_protocol::env::GatewayConfig;
use bridge_protocol::policy::{is_safe_method, DEFAULT_REQUEST_HEADERS};
use bridge_protocol::wire::{self, Headers, RequestFile};
use bridge_protocol::{codec, token};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::body;
use crate::queue::Queue;
use crate::refusal::Refusal;
use crate::reply;
use crate::tasks::Tasks;
use crate::watch::{Waiter, Waiters};

/// Shared by all requests.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    queue: Queue,
    waiters: Waiters,
    tasks: Tasks,
    /// One permit per request this gateway may have in the queue at once. Counted here,
    /// not by listing `requests/`: files the sandbox forges must not use up honest
    /// callers' depth.
    depth: Arc<Semaphore>,
}

impl AppState {
    /// Opens (creates) the queue and starts the response watcher. Needs a tokio runtime.
    /// The watcher runs until [`crate::run`] stops it, or until the last clone of this
    /// state is dropped.
    pub fn new(config: GatewayConfig) -> std::io::Result<Self> {
        let queue = Queue::create(&config.queue_dir)?;
        let waiters = Waiters::default();
        let tasks = Tasks::new();
        let poll = config.poll_interval;
        let inotify = crate::watch::spawn(queue.clone(), waiters.clone(), poll, &tasks);
        tracing::info!(inotify, "watching for responses");
        let depth = Arc::new(Semaphore::new(config.max_queue_depth));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                queue,
                waiters,
                tasks,
                depth,
            }),
        })
    }

    /// The gateway's settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// The queue the gateway spools to.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// Callers waiting for an answer right now.
    pub fn in_flight(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Gateway tasks alive now: the response watcher's, and one per connection while
    /// [`crate::run`] serves. Zero once `run` has returned, which joins them all.
    pub fn live_tasks(&self) -> usize {
        self.inner.tasks.live()
    }

    /// The gateway's own tasks, for [`crate::run`] to track and stop.
    pub(crate) fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }
}

/// The gateway's router: one handler for every method and path.
pub fn app(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let id = new_request_id();
    let span = tracing::info_span!(
        "request",
        id = %id,
        // The agent's own words: bounded and escaped like everything from the sandbox.
        method = %bridge_protocol::shown(request.method().as_str()),
        path = %bridge_protocol::shown(request.uri().path())
    );
    async move {
        let started = std::time::Instant::now();
        let response = serve(&state.inner, id, request)
            .await
            .unwrap_or_else(IntoResponse::into_response);
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        );
        response
    }
    .instrument(span)
    .await
}

/// One call; a refusal is answered only after what is left of the body has been read
/// (bounded), so the client sees it.
async fn serve(inner: &Inner, id: String, request: Request) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    let mut body = body.into_data_stream();
    let outcome = answer(inner, id, parts, &mut body).await;
    if outcome.is_err() && !body::linger(&mut body).await {
        tracing::info!("the refused body was not all read; the connection closes");
    }
    outcome
}

async fn answer(
    inner: &Inner,
    id: String,
    parts: Parts,
    body: &mut BodyDataStream,
) -> Result<Response, Refusal> {
    let config = &inner.config;
    if !authorized(&parts.headers, &config.token) {
        tracing::info!("refused: missing or wrong bridge token");
        return Err(Refusal::Unauthorized);
    }
    let _admitted = admit(inner)?;
    let limit = config.max_body_bytes;
    body::check_declared(&parts.method, parts.uri.path(), &parts.headers)
        .map_err(|e| Refusal::from_body(e, limit))?;
    let bytes = body::read_limited(&parts.headers, body, limit)
        .await
        .map_err(|e| Refusal::from_body(e, limit))?;
    let path = parts.uri.path().to_owned();
    let (text, encoding) = body::encode(&parts.method, &path, &parts.headers, bytes)
        .map_err(|e| Refusal::from_body(e, limit))?;
    let file = RequestFile {
        id: id.clone(),
        method: parts.method.as_str().to_ascii_uppercase(),
        path,
        query: parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
        headers: allowlisted_headers(&parts.headers),
        body: text,
        body_encoding: encoding,
        created_at: bridge_protocol::time::iso8601_at(SystemTime::now()),
    };
    // Register before publishing, so an instant answer cannot be missed.
    let waiter = inner.waiters.register(&id);
    let published = Published::publish(&inner.queue, &id, &wire::to_line(&file));
    let published = published.map_err(|e| {
        tracing::error!(error = %e, "could not write the request file");
        Refusal::QueueNotWritable
    })?;
    let answer = wait_for_answer(inner, &id, &waiter).await;
    drop(published); // the request file goes, whether answered or not
    match answer {
        Some(Ok(bytes)) => reply::from_response_file(&bytes, &id, config.max_body_bytes),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "unreadable response file");
            Err(Refusal::BadGateway(
                "the bridge's response was unreadable".into(),
            ))
        }
        None => Err(timed_out(&file.method)),
    }
}

/// Queue depth: a permit held until the call is answered, or 503 when all are taken.
fn admit(inner: &Inner) -> Result<OwnedSemaphorePermit, Refusal> {
    inner.depth.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!(
            depth = inner.config.max_queue_depth,
            "refused: the queue is full"
        );
        Refusal::QueueFull
    })
}

/// Waits (bounded) for `responses/<id>.json`: `None` on time-out.
async fn wait_for_answer(
    inner: &Inner,
    id: &str,
    waiter: &Waiter,
) -> Option<std::io::Result<Vec<u8>>> {
    let limit = codec::envelope_limit(inner.config.max_body_bytes);
    let wait = async {
        loop {
            match inner.queue.take_response(id, limit) {
                Ok(Some(bytes)) => return Ok(bytes),
                Ok(None) => waiter.notified().await,
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(inner.config.response_timeout, wait).await {
        Ok(result) => Some(result),
        // One last look: an answer that landed at the deadline still counts.
        Err(_) => inner.queue.take_response(id, limit).transpose(),
    }
}

/// The caller waited too long. An unsafe request was published and may have been
/// forwarded: its outcome is unknown, and a blind retry could do it twice.
fn timed_out(method: &str) -> Refusal {
    if is_safe_method(method) {
        tracing::warn!("timed out waiting for the host");
        Refusal::TimedOut
    } else {
        tracing::warn!("timed out waiting for the host; outcome unknown");
        Refusal::Indeterminate(
            "timed out waiting for the bridge host; the request may or may not have been applied",
        )
    }
}

fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(token::bearer_token)
        .is_some_and(|given| token::constant_time_eq(given.as_bytes(), expected.as_bytes()))
}

/// Allowlisted request headers, lower-case, repeated values joined with ", ".
fn allowlisted_headers(headers: &HeaderMap) -> Headers {
    let mut out = Headers::new();
    for name in DEFAULT_REQUEST_HEADERS {
        let values: Vec<&str> = headers
            .get_all(*name)
            .iter()
            .filter_map(|v: &HeaderValue| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            out.insert((*name).to_owned(), values.join(", "));
        }
    }
    out
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // Uniqueness, not secrecy, is what ids need: fall back to the clock and a counter.
        tracing::warn!(error = %e, "no OS randomness for a request id");
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_le_bytes();
    }
    token::format_uuid_v4(bytes)
}

/// A published request file; withdrawn when dropped (answered, timed out, or the client
/// went away), which tells the host nobody waits any more.
struct Published<'a> {
    queue: &'a Queue,
    id: &'a str,
}

impl<'a> Published<'a> {
    fn publish(queue: &'a Queue, id: &'a str, bytes: &[u8]) -> std::io::Result<Self> {
        queue.publish(id, bytes)?;
        Ok(Self { queue, id })
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.queue.withdraw(self.id);
    }
}
