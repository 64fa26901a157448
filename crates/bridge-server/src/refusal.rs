//! Every refusal the gateway answers, and the one place each becomes an HTTP answer:
//! `{"error": ...}` JSON with its status (409 also carries the outcome header and says not
//! to retry blindly).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bridge_protocol::{OUTCOME_HEADER, OUTCOME_INDETERMINATE};

use crate::body::BodyError;

/// Why the gateway answers a call itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 401: the bearer token is missing or not this run's.
    Unauthorized,
    /// 503: the queue holds as many requests as it may, even after sweeping abandoned ones.
    QueueFull,
    /// 503: the request file could not be written.
    QueueNotWritable,
    /// 413: the body is over the limit (in bytes).
    TooLarge(usize),
    /// 415: the content type is not one the bridge carries.
    UnsupportedType(String),
    /// 400: the body could not be read (broken, or too slow to arrive).
    BadBody(String),
    /// 502: the host's response file could not be used.
    BadGateway(String),
    /// 504: a safe request's caller waited longer than the response timeout.
    TimedOut,
    /// 409: the request may or may not have been applied upstream (an unsafe request that
    /// timed out, or the host said so): the caller must not retry blindly.
    Indeterminate(&'static str),
}

impl Refusal {
    /// A refused body, with the limit that applied.
    pub(crate) fn from_body(e: BodyError, limit: usize) -> Self {
        match e {
            BodyError::TooLarge => Refusal::TooLarge(limit),
            BodyError::Unsupported(why) => Refusal::UnsupportedType(why),
            BodyError::Broken(why) => Refusal::BadBody(why),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::QueueFull | Refusal::QueueNotWritable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::BadBody(_) => StatusCode::BAD_REQUEST,
            Refusal::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Refusal::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Indeterminate(_) => StatusCode::CONFLICT,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Unauthorized => "missing or invalid bridge token".into(),
            Refusal::QueueFull => "the bridge queue is full; retry later".into(),
            Refusal::QueueNotWritable => "the bridge queue is not writable".into(),
            Refusal::TooLarge(limit) => format!("request body is over the limit of {limit} bytes"),
            Refusal::UnsupportedType(why) | Refusal::BadBody(why) | Refusal::BadGateway(why) => {
                why.clone()
            }
            Refusal::TimedOut => "timed out waiting for the bridge host".into(),
            Refusal::Indeterminate(why) => (*why).into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match &self {
            Refusal::Indeterminate(why) => bridge_protocol::indeterminate_body(why),
            other => bridge_protocol::error_body(&other.message()),
        };
        let mut response =
            (self.status(), [("content-type", "application/json")], body).into_response();
        if matches!(self, Refusal::Indeterminate(_)) {
            response.headers_mut().insert(
                OUTCOME_HEADER,
                HeaderValue::from_static(OUTCOME_INDETERMINATE),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(refusal: Refusal) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = refusal.into_response();
        let status = response.status();
        let outcome = response
            .headers()
            .get(OUTCOME_HEADER)
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        (
            status,
            outcome,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn each_refusal_has_its_status_and_json_error() {
        for (refusal, status, message) in [
            (
                Refusal::Unauthorized,
                401,
                "missing or invalid bridge token",
            ),
            (
                Refusal::QueueFull,
                503,
                "the bridge queue is full; retry later",
            ),
            (
                Refusal::TooLarge(9),
                413,
                "request body is over the limit of 9 bytes",
            ),
            (Refusal::UnsupportedType("no xml".into()), 415, "no xml"),
            (
                Refusal::TimedOut,
                504,
                "timed out waiting for the bridge host",
            ),
        ] {
            let (got, outcome, json) = body(refusal).await;
            assert_eq!(got.as_u16(), status);
            assert_eq!(outcome, None);
            assert_eq!(json["error"], message);
        }
    }

    #[tokio::test]
    async fn an_indeterminate_outcome_says_not_to_retry() {
        let (status, outcome, json) = body(Refusal::Indeterminate("unknown")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(outcome.as_deref(), Some(OUTCOME_INDETERMINATE));
        assert_eq!(json["outcome"], OUTCOME_INDETERMINATE);
        assert_eq!(json["retryable"], false);
    }
}
