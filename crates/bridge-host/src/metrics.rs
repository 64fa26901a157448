//! What the bridge does, as Prometheus metrics: requests by decision and status, request
//! and upstream latency, upstream errors by kind, transport errors, requests in hand,
//! execs (sessions opened, for the stream transport) and gateway restarts.
//!
//! An orchestrator links [`Metrics`] into its own registry ([`Metrics::register`]) or
//! serves [`Metrics::encode`]; the CLI serves it at `/metrics` (`--metrics-listen`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::worker::Decision;

/// Latency buckets: 0.5 ms doubling to about 33 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 17)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// An upstream call that failed, by what is known of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// It never left the host (connection refused, DNS).
    NotSent,
    /// It may have reached the upstream (a time-out or reset after sending).
    MaybeSent,
}

/// The bridge's metrics. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histogram,
    upstream_seconds: Histogram,
    upstream_errors: Family<KindLabels, Counter>,
    transport_errors: Counter,
    in_hand: Gauge,
    execs: Counter,
    restarts: Counter,
    /// The transport's exec total when last seen.
    execs_seen: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Histogram::new(latency_buckets()),
            upstream_seconds: Histogram::new(latency_buckets()),
            upstream_errors: Family::default(),
            transport_errors: Counter::default(),
            in_hand: Gauge::default(),
            execs: Counter::default(),
            restarts: Counter::default(),
            execs_seen: Arc::default(),
        }
    }
}

impl Metrics {
    /// New metrics, registered nowhere yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every metric under `paperclip_bridge_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("paperclip_bridge");
        r.register(
            "requests",
            "Requests answered, by decision and status",
            self.requests.clone(),
        );
        r.register(
            "request_seconds",
            "Time from taking a request to its answer",
            self.request_seconds.clone(),
        );
        r.register(
            "upstream_seconds",
            "Time of each upstream call",
            self.upstream_seconds.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream calls without an answer, by kind",
            self.upstream_errors.clone(),
        );
        r.register(
            "transport_errors",
            "Failed takes and delivers (each retried)",
            self.transport_errors.clone(),
        );
        r.register(
            "requests_in_hand",
            "Requests taken and not yet delivered",
            self.in_hand.clone(),
        );
        r.register(
            "execs",
            "Execs into the sandbox (sessions opened, for the stream transport)",
            self.execs.clone(),
        );
        r.register(
            "gateway_restarts",
            "Gateway restarts after a crash",
            self.restarts.clone(),
        );
    }

    /// A registry holding only these metrics, as Prometheus text.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    pub(crate) fn answered(&self, decision: Decision, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                decision: decision.as_str(),
                status,
            })
            .inc();
        self.request_seconds.observe(seconds);
    }

    pub(crate) fn upstream_call(&self, seconds: f64, failure: Option<UpstreamFailure>) {
        self.upstream_seconds.observe(seconds);
        if let Some(failure) = failure {
            let kind = match failure {
                UpstreamFailure::NotSent => "not_sent",
                UpstreamFailure::MaybeSent => "maybe_sent",
            };
            self.upstream_errors
                .get_or_create(&KindLabels { kind })
                .inc();
        }
    }

    pub(crate) fn transport_error(&self) {
        self.transport_errors.inc();
    }

    pub(crate) fn taken(&self) {
        self.in_hand.inc();
    }

    pub(crate) fn finished(&self) {
        self.in_hand.dec();
    }

    /// Brings the exec counter up to the transport's total (the worker calls it after
    /// each take).
    pub(crate) fn observe_execs(&self, total: u64) {
        let before = self.execs_seen.swap(total, Ordering::Relaxed);
        self.execs.inc_by(total.saturating_sub(before));
    }

    pub(crate) fn restarted(&self) {
        self.restarts.inc();
    }
}
