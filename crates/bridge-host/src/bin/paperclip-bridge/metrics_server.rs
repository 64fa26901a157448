//! `--metrics-listen ADDR`: the bridge's metrics as Prometheus text at `/metrics`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use bridge_host::metrics::Metrics;

/// OpenMetrics text, which Prometheus scrapes (and what prometheus-client writes).
const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metrics for the worker if `listen` is set, served from now until the process ends.
pub async fn serve(listen: Option<SocketAddr>) -> Result<Option<Metrics>> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    let bound = listener
        .local_addr()
        .context("the metrics listener's address")?;
    let served = metrics.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = served.encode();
            async move { ([(CONTENT_TYPE, CONTENT)], text) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    // On stderr: stdout belongs to `up`'s JSON line and the agent.
    eprintln!("paperclip-bridge: metrics at http://{bound}/metrics");
    Ok(Some(metrics))
}
