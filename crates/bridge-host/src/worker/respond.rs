//! Turning one taken request into its answer: refuse it, or forward it and translate what
//! the upstream did. One tracing span and one audit record per request.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bridge_protocol::codec::envelope_limit;
use bridge_protocol::policy::is_safe_method;
use bridge_protocol::shown;
use bridge_protocol::wire::{self, Headers, ResponseFile};
use bridge_protocol::{error_body, indeterminate_body, OUTCOME_HEADER, OUTCOME_INDETERMINATE};
use tracing::Instrument as _;

use super::check::check;
use super::{Decision, Pending, Shared};
use crate::audit::AuditRecord;
use crate::metrics::UpstreamFailure;
use crate::proxy::{Forward, Forwarded};
use crate::transport::{PutItem, TakeProblem, Taken};

/// The answer to one request (never fails: every problem becomes an HTTP answer).
pub(super) async fn answer(shared: &Shared, incoming: Taken) -> Pending {
    let span = tracing::info_span!("request", id = %shown(&incoming.id));
    async {
        let started = Instant::now();
        let outcome = decide(shared, &incoming).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            method = %shown(&outcome.method),
            path = %shown(&outcome.path),
            decision = outcome.decision.as_str(),
            status = outcome.file.status,
            upstream_status = outcome.upstream_status,
            latency_ms,
            "answered"
        );
        audit(shared, &incoming.id, &outcome, latency_ms);
        if let Some(m) = &shared.config.metrics {
            m.answered(outcome.decision, outcome.file.status, latency_ms / 1000.0);
        }
        pending(&incoming.id, &outcome.file)
    }
    .instrument(span)
    .await
}

/// The answer for a request still queued when the worker stops.
pub(super) fn stopping(shared: &Shared, incoming: &Taken) -> Pending {
    let outcome = match claimed_unsafe(shared, incoming) {
        Some(outcome) => outcome,
        None => Outcome::error(503, "the bridge is stopping", Decision::Stopping, "-", "-"),
    };
    audit(shared, &incoming.id, &outcome, 0.0);
    pending(&incoming.id, &outcome.file)
}

/// What was decided about one request.
struct Outcome {
    method: String,
    path: String,
    decision: Decision,
    upstream_status: Option<u16>,
    file: ResponseFile,
}

impl Outcome {
    fn error(status: u16, message: &str, decision: Decision, method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            decision,
            upstream_status: None,
            file: response(status, json_headers(), &error_body(message)),
        }
    }

    fn indeterminate(message: &str, method: &str, path: &str) -> Self {
        let mut headers = json_headers();
        headers.insert(OUTCOME_HEADER.into(), OUTCOME_INDETERMINATE.into());
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            decision: Decision::Indeterminate,
            upstream_status: None,
            file: response(504, headers, &indeterminate_body(message)),
        }
    }
}

async fn decide(shared: &Shared, incoming: &Taken) -> Outcome {
    let bytes = match &incoming.file {
        Ok(bytes) => bytes,
        Err(TakeProblem::TooLarge { size }) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            let message = format!("request file is {size} bytes, over the limit");
            return Outcome::error(413, &message, Decision::Invalid, "-", "-");
        }
        Err(TakeProblem::Unreadable) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Outcome::error(
                400,
                "request file could not be read",
                Decision::Invalid,
                "-",
                "-",
            );
        }
    };
    if let Some(outcome) = claimed_unsafe(shared, incoming) {
        return outcome;
    }
    let checked = match check(&incoming.id, bytes, &shared.policy) {
        Ok(checked) => checked,
        Err(refusal) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            let r = *refusal;
            return Outcome::error(r.status, &r.message, r.decision, &r.method, &r.path);
        }
    };
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let (method, path) = (checked.method.clone(), checked.path.to_string());
    let upstream_started = Instant::now();
    let forwarded = shared
        .upstream
        .forward(
            Forward {
                method: &checked.method,
                path: &checked.path,
                query: &checked.query,
                headers: &checked.headers,
                body: checked.body,
            },
            &shared.policy.response_headers,
            shared.policy.max_body_bytes,
        )
        .await;
    if let Some(m) = &shared.config.metrics {
        let failure = match &forwarded {
            Forwarded::Answer { .. } => None,
            Forwarded::NotSent(_) => Some(UpstreamFailure::NotSent),
            Forwarded::MaybeSent(_) => Some(UpstreamFailure::MaybeSent),
        };
        m.upstream_call(upstream_started.elapsed().as_secs_f64(), failure);
    }
    match forwarded {
        Forwarded::Answer {
            status,
            headers,
            body,
        } => Outcome {
            method,
            path,
            decision: Decision::Forwarded,
            upstream_status: Some(status),
            file: response(status, headers, &body),
        },
        Forwarded::NotSent(why) => {
            tracing::warn!(why, "upstream unreachable");
            Outcome::error(
                502,
                &format!("upstream unreachable: {why}"),
                Decision::Failed,
                &method,
                &path,
            )
        }
        Forwarded::MaybeSent(why) if is_safe_method(&method) => {
            tracing::warn!(why, "upstream failed");
            Outcome::error(
                504,
                &format!("upstream failed: {why}"),
                Decision::Failed,
                &method,
                &path,
            )
        }
        Forwarded::MaybeSent(why) => {
            tracing::warn!(
                why,
                "upstream failed after the request may have been applied"
            );
            let message = format!("upstream failed after the request was sent ({why}); it may or may not have been applied");
            Outcome::indeterminate(&message, &method, &path)
        }
    }
}

/// A request claimed before this worker saw it may already have been forwarded: an
/// unsafe one is never sent again.
fn claimed_unsafe(shared: &Shared, incoming: &Taken) -> Option<Outcome> {
    if !incoming.previously_claimed {
        return None;
    }
    let bytes = incoming.file.as_ref().ok()?;
    // Bounded like every read of a request file: an oversized one was never forwarded, so
    // it is answered as too large, not as possibly applied.
    let limit = envelope_limit(shared.policy.max_body_bytes);
    let file: wire::RequestFile = wire::parse(bytes, limit).ok()?;
    if is_safe_method(&file.method) {
        return None;
    }
    Some(Outcome::indeterminate(
        "the bridge restarted while this request was in flight; it may or may not have been applied",
        &file.method,
        &file.path,
    ))
}

fn audit(shared: &Shared, id: &str, outcome: &Outcome, latency_ms: f64) {
    if let Some(log) = &shared.config.audit {
        log.record(&AuditRecord {
            time: bridge_protocol::time::iso8601_at(SystemTime::now()),
            id,
            method: &outcome.method,
            path: &outcome.path,
            decision: outcome.decision,
            status: outcome.file.status,
            upstream_status: outcome.upstream_status,
            latency_ms,
        });
    }
}

fn pending(id: &str, file: &ResponseFile) -> Pending {
    let mut file = file.clone();
    file.id = id.to_owned();
    Pending {
        outgoing: PutItem {
            id: id.to_owned(),
            file: wire::to_line(&file),
        },
        since: Instant::now(),
    }
}

fn response(status: u16, headers: Headers, body: &[u8]) -> ResponseFile {
    ResponseFile::new(
        "",
        status,
        headers,
        body,
        bridge_protocol::time::iso8601_at(SystemTime::now()),
    )
}

fn json_headers() -> Headers {
    [("content-type".to_owned(), "application/json".to_owned())].into()
}
