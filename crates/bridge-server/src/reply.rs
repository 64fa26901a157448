//! Turning response files and failures into HTTP answers for the agent.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bridge_protocol::wire::{self, ResponseFile};
use bridge_protocol::{codec, OUTCOME_HEADER, OUTCOME_INDETERMINATE};

use crate::refusal::Refusal;

/// Response headers never copied from a response file: the body length is ours to set,
/// and hop-by-hop headers describe a connection that is not this one.
const NEVER_COPIED: &[&str] = &[
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
];

/// The agent's answer from a response file: 409 for an indeterminate outcome, 502 when the
/// file is malformed.
pub(crate) fn from_response_file(
    bytes: &[u8],
    id: &str,
    max_body_bytes: usize,
) -> Result<Response, Refusal> {
    let file: ResponseFile = match wire::parse(bytes, codec::envelope_limit(max_body_bytes)) {
        Ok(file) => file,
        Err(e) => return Err(bad_gateway(format!("malformed response file: {e}"))),
    };
    if file.id != id {
        return Err(bad_gateway("response file is for another request".into()));
    }
    let status = match StatusCode::from_u16(file.status) {
        Ok(s) if (200..=599).contains(&s.as_u16()) => s,
        _ => {
            let why = format!("response status {} is not valid", file.status);
            return Err(bad_gateway(why));
        }
    };
    if file
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(OUTCOME_HEADER) && v.trim() == OUTCOME_INDETERMINATE)
    {
        return Err(Refusal::Indeterminate(
            "the upstream outcome of this request is unknown; do not retry blindly",
        ));
    }
    let body = match file.body_bytes(max_body_bytes) {
        Ok(body) => body,
        Err(e) => return Err(bad_gateway(format!("response body: {e}"))),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &file.headers {
        let lower = name.to_ascii_lowercase();
        if NEVER_COPIED.contains(&lower.as_str()) {
            continue;
        }
        match (
            HeaderName::try_from(lower),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            // The name is the file's unchecked text: it stays out of the log.
            _ => tracing::warn!("skipping an invalid response header"),
        }
    }
    Ok(response)
}

fn bad_gateway(why: String) -> Refusal {
    tracing::warn!(why, "bad response file");
    Refusal::BadGateway(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse as _;

    /// What the agent gets: the answer, or the refusal's own.
    fn answer(bytes: &[u8], id: &str, max_body_bytes: usize) -> Response {
        from_response_file(bytes, id, max_body_bytes).unwrap_or_else(|r| r.into_response())
    }

    fn file(status: u16, headers: &str, body: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"r1","status":{status},"headers":{headers},"body":{body},"completedAt":"t"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn passes_status_headers_and_body_but_not_content_length() {
        let r = answer(
            &file(
                201,
                r#"{"etag":"\"v1\"","content-length":"999","connection":"close","location":"/x"}"#,
                r#""hi""#,
            ),
            "r1",
            100,
        );
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["etag"], "\"v1\"");
        assert_eq!(r.headers()["location"], "/x");
        assert!(r.headers().get("connection").is_none());
        assert!(r.headers().get("content-length").is_none_or(|v| v == "2"));
    }

    #[test]
    fn malformed_files_are_502() {
        for bad in [
            b"not json".to_vec(),
            file(99, "{}", r#""""#),
            file(600, "{}", r#""""#),
            file(200, "{}", r#""x","bodyEncoding":"base64""#),
            file(200, "{}", r#""xyz","bodyEncoding":"gzip""#),
        ] {
            assert_eq!(answer(&bad, "r1", 100).status(), 502);
        }
        assert_eq!(
            answer(&file(200, "{}", r#""""#), "other", 100).status(),
            502
        );
    }

    #[test]
    fn indeterminate_outcome_becomes_409() {
        let r = answer(
            &file(
                504,
                r#"{"x-paperclip-bridge-outcome":"indeterminate"}"#,
                r#""""#,
            ),
            "r1",
            100,
        );
        assert_eq!(r.status(), 409);
        assert_eq!(r.headers()[OUTCOME_HEADER], OUTCOME_INDETERMINATE);
    }
}
