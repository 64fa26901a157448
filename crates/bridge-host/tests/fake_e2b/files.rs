//! The fake envd's files API: `GET /files?path=` reads a file, `POST /files?path=` writes
//! one from a multipart `file` field (the part's file name is the path when no `path` is
//! given, as for the SDK's `write_files`) or from a raw `application/octet-stream` body.
//! Parent directories are made; files are overwritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State as St};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::State;

pub fn routes() -> Router<Arc<State>> {
    Router::new().route("/files", get(read).post(write))
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// A path as envd takes it: absolute, or relative to the user's home.
fn resolve(state: &State, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        state.home.join(path)
    }
}

async fn read(
    St(state): St<Arc<State>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state.count("GET /files");
    if let Err(r) = state.envd_allowed(&headers) {
        return r;
    }
    let Some(path) = query.get("path") else {
        return error(StatusCode::BAD_REQUEST, "path is required");
    };
    match tokio::fs::read(resolve(&state, path)).await {
        Ok(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => error(
            StatusCode::NOT_FOUND,
            &format!("path '{path}' does not exist"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn write(
    St(state): St<Arc<State>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    state.count("POST /files");
    if let Err(r) = state.envd_allowed(request.headers()) {
        return r;
    }
    let ct = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let files = if ct.starts_with("multipart/form-data") {
        match Multipart::from_request(request, &()).await {
            Ok(multipart) => parts(multipart, query.get("path")).await,
            Err(e) => Err(e.to_string()),
        }
    } else if ct == "application/octet-stream" {
        let Some(path) = query.get("path").cloned() else {
            return error(StatusCode::BAD_REQUEST, "path is required for octet-stream");
        };
        match Bytes::from_request(request, &()).await {
            Ok(bytes) => Ok(vec![(path, bytes)]),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Err(format!("unsupported content type {ct:?}"))
    };
    let files = match files {
        Ok(files) => files,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut entries = Vec::new();
    for (path, bytes) in files {
        let target = resolve(&state, &path);
        if let Some(parent) = target.parent() {
            let _ = tokio::fs::create_dir_all(parent).await;
        }
        if let Err(e) = tokio::fs::write(&target, &bytes).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
        entries.push(json!({"path": target.to_string_lossy(), "name": name, "type": "file"}));
    }
    Json(Value::Array(entries)).into_response()
}

/// Every `file` part: the `path` parameter names it, else the part's file name.
async fn parts(
    mut multipart: Multipart,
    path: Option<&String>,
) -> Result<Vec<(String, Bytes)>, String> {
    let mut files = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        if field.name() != Some("file") {
            continue;
        }
        let name = match path {
            Some(p) => p.clone(),
            None => field
                .file_name()
                .ok_or("a part without a file name")?
                .to_owned(),
        };
        files.push((name, field.bytes().await.map_err(|e| e.to_string())?));
    }
    if files.is_empty() {
        return Err("no file part".into());
    }
    Ok(files)
}
