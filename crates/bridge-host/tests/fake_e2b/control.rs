//! The fake control plane: `POST /v2/sandboxes`, `POST /v2/sandboxes/{id}/connect`,
//! `POST /sandboxes/{id}/timeout`, `DELETE /sandboxes/{id}`, `GET /sandboxes/{id}`, with
//! the API key checked as E2B checks it (`X-API-KEY`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State as St};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{json_error, FakeSandbox, State, API_KEY, ENVD_VERSION};

static NEXT: AtomicU64 = AtomicU64::new(1);

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/v2/sandboxes", post(create))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}", delete(kill).get(info))
}

fn authorized(headers: &HeaderMap) -> Result<(), Response> {
    match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(API_KEY) => Ok(()),
        _ => Err(json_error(
            StatusCode::UNAUTHORIZED,
            r#"{"code":401,"message":"Invalid API key"}"#,
        )),
    }
}

fn record(id: &str, sandbox: &FakeSandbox) -> Value {
    json!({
        "templateID": sandbox.template,
        "sandboxID": id,
        "clientID": "fake",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sandbox.token,
        "domain": null,
    })
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": 404, "message": format!("sandbox {id} not found")})),
    )
        .into_response()
}

async fn create(
    St(state): St<Arc<State>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.count("POST /v2/sandboxes");
    if let Err(r) = authorized(&headers) {
        return r;
    }
    let Some(template) = body.get("templateID").and_then(Value::as_str) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            r#"{"code":400,"message":"templateID is required"}"#,
        );
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("fakesbx{n:04}");
    let sandbox = FakeSandbox {
        template: template.to_owned(),
        token: format!("envd-token-{n}-{}", std::process::id()),
        alive: true,
        ttl_secs: body.get("timeout").and_then(Value::as_u64).unwrap_or(15),
        renewals: 0,
    };
    let answer = record(&id, &sandbox);
    state.sandboxes.lock().unwrap().insert(id, sandbox);
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn connect(
    St(state): St<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.count("POST /v2/sandboxes/{id}/connect");
    if let Err(r) = authorized(&headers) {
        return r;
    }
    let mut sandboxes = state.sandboxes.lock().unwrap();
    match sandboxes.get_mut(&id) {
        Some(s) if s.alive => {
            if let Some(ttl) = body.get("timeout").and_then(Value::as_u64) {
                s.ttl_secs = ttl;
            }
            (StatusCode::OK, Json(record(&id, s))).into_response()
        }
        _ => not_found(&id),
    }
}

async fn set_timeout(
    St(state): St<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.count("POST /sandboxes/{id}/timeout");
    if let Err(r) = authorized(&headers) {
        return r;
    }
    let mut sandboxes = state.sandboxes.lock().unwrap();
    match sandboxes.get_mut(&id) {
        Some(s) if s.alive => {
            s.ttl_secs = body
                .get("timeout")
                .and_then(Value::as_u64)
                .unwrap_or(s.ttl_secs);
            s.renewals += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => not_found(&id),
    }
}

async fn kill(St(state): St<Arc<State>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    state.count("DELETE /sandboxes/{id}");
    if let Err(r) = authorized(&headers) {
        return r;
    }
    let found = match state.sandboxes.lock().unwrap().get_mut(&id) {
        Some(s) if s.alive => {
            s.alive = false;
            true
        }
        _ => false,
    };
    if !found {
        return not_found(&id);
    }
    super::envd::kill_all(&state);
    StatusCode::NO_CONTENT.into_response()
}

async fn info(St(state): St<Arc<State>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    state.count("GET /sandboxes/{id}");
    if let Err(r) = authorized(&headers) {
        return r;
    }
    let sandboxes = state.sandboxes.lock().unwrap();
    match sandboxes.get(&id) {
        Some(s) if s.alive => {
            let mut detail = record(&id, s);
            detail["state"] = json!("running");
            detail["startedAt"] = json!("2026-12-02T00:00:00Z");
            detail["endAt"] = json!("2026-12-02T01:00:00Z");
            detail["cpuCount"] = json!(2);
            detail["memoryMB"] = json!(512);
            detail["diskSizeMB"] = json!(1024);
            detail["metadata"] = json!({});
            (StatusCode::OK, Json(detail)).into_response()
        }
        _ => not_found(&id),
    }
}
