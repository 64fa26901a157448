//! Re-validating a request file: every queue file is untrusted input (any process in the
//! sandbox can write one without a token), so nothing the gateway checked is assumed.

use bridge_protocol::codec::{envelope_limit, CodecError};
use bridge_protocol::path::canonicalize_query;
use bridge_protocol::policy::route_denied_message;
use bridge_protocol::wire::{self, Headers, RequestFile, WireError};
use bridge_protocol::{canonicalize_path, CanonicalPath};

use super::Decision;
use crate::policy::HostPolicy;

/// A request that may be forwarded.
#[derive(Debug)]
pub struct Checked {
    /// The method, upper-case and allowed.
    pub method: String,
    /// The canonical path, allowed by the route allowlist.
    pub path: CanonicalPath,
    /// The canonical query string (with its `?`), or empty.
    pub query: String,
    /// Only allowlisted headers.
    pub headers: Headers,
    /// The decoded body.
    pub body: Vec<u8>,
}

/// Why a request is answered without forwarding it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status the agent gets (400, 403, 413, ...).
    pub status: u16,
    /// Why, in the answer's JSON error body.
    pub message: String,
    /// [`Decision::Invalid`] (malformed) or [`Decision::Denied`] (policy).
    pub decision: Decision,
    /// What the audit log and traces show as the request (method and path as given).
    pub method: String,
    /// The path as given, likewise.
    pub path: String,
}

/// Checks one request file against the policy.
pub fn check(id: &str, bytes: &[u8], policy: &HostPolicy) -> Result<Checked, Box<Refusal>> {
    let limit = envelope_limit(policy.max_body_bytes);
    let file: RequestFile = wire::parse(bytes, limit).map_err(|e| match e {
        WireError::TooLarge { .. } => refuse(413, &e.to_string(), "-", "-"),
        _ => refuse(400, &format!("invalid request file: {e}"), "-", "-"),
    })?;
    let (method, raw_path) = (file.method.as_str(), file.path.as_str());
    if file.id != id {
        return Err(refuse(
            400,
            "request id does not match its file name",
            method,
            raw_path,
        ));
    }
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(refuse(400, "invalid method", method, raw_path));
    }
    let path = canonicalize_path(raw_path)
        .map_err(|reason| refuse(400, &reason.to_string(), method, raw_path))?;
    let query = canonicalize_query(&file.query)
        .map_err(|reason| refuse(400, &reason.to_string(), method, raw_path))?;
    if !policy.routes.allows(method, &path) {
        let message = route_denied_message(method, path.as_str());
        return Err(Box::new(Refusal {
            decision: Decision::Denied,
            ..*refuse(403, &message, method, raw_path)
        }));
    }
    let body = file
        .body_bytes(policy.max_body_bytes)
        .map_err(|e| match e {
            CodecError::TooLarge { .. } => refuse(413, &e.to_string(), method, raw_path),
            CodecError::NonCanonicalBase64 => refuse(400, &e.to_string(), method, raw_path),
        })?;
    Ok(Checked {
        method: file.method.clone(),
        path,
        query,
        headers: allowlisted(&file.headers, &policy.request_headers),
        body,
    })
}

/// Keeps allowlisted headers whose values are valid HTTP field values; anything else (a
/// smuggled `authorization`, `host`, run id, a value with a control character that the
/// HTTP client would refuse to send, failing the whole request) is dropped.
fn allowlisted(headers: &Headers, allowed: &[String]) -> Headers {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, v)| allowed.contains(k) && is_field_value(v))
        .map(|(k, v)| (k, v.clone()))
        .collect()
}

/// RFC 9110 field-value bytes: tab, visible ASCII, space and obs-text (no other control).
fn is_field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn refuse(status: u16, message: &str, method: &str, path: &str) -> Box<Refusal> {
    Box::new(Refusal {
        status,
        message: message.to_owned(),
        decision: Decision::Invalid,
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(method: &str, path: &str, extra: &str) -> String {
        format!(
            r#"{{"id":"r1","method":"{method}","path":"{path}","query":"","headers":{{"accept":"*/*","authorization":"Bearer stolen","host":"evil","x-paperclip-run-id":"other"}},"body":""{extra},"createdAt":"t"}}"#
        )
    }

    fn status(bytes: impl AsRef<[u8]>) -> u16 {
        check("r1", bytes.as_ref(), &HostPolicy::default())
            .map(|_| 200)
            .unwrap_or_else(|r| r.status)
    }

    #[test]
    fn a_good_request_keeps_only_allowlisted_headers() {
        let checked = check(
            "r1",
            file("GET", "/api/agents/me", "").as_bytes(),
            &HostPolicy::default(),
        )
        .unwrap();
        assert_eq!(checked.headers.keys().collect::<Vec<_>>(), ["accept"]);
        assert_eq!(checked.path.as_str(), "/api/agents/me");
    }

    #[test]
    fn header_values_with_control_characters_are_dropped() {
        let policy = HostPolicy::default();
        for (value, kept) in [
            ("a\tb", true),
            ("é", true),
            ("a\u{1}b", false),
            ("a\u{7f}", false),
        ] {
            let json = file("GET", "/api/agents/me", "").replace(
                r#""accept":"*/*""#,
                &format!(r#""accept":{}"#, serde_json::json!(value)),
            );
            let checked = check("r1", json.as_bytes(), &policy).unwrap();
            assert_eq!(checked.headers.contains_key("accept"), kept, "{value:?}");
        }
    }

    #[test]
    fn queries_are_forwarded_in_canonical_form() {
        let json =
            file("GET", "/api/agents/me", "").replace(r#""query":"""#, r#""query":"?q='x'""#);
        let checked = check("r1", json.as_bytes(), &HostPolicy::default()).unwrap();
        assert_eq!(checked.query, "?q=%27x%27");
    }

    #[test]
    fn refusals() {
        assert_eq!(status("not json"), 400);
        assert_eq!(status(file("GET", "/api/companies/../agents", "")), 400);
        assert_eq!(status(file("GET", "/api/a%2fb", "")), 400);
        assert_eq!(status(file("get", "/api/agents/me", "")), 400);
        assert_eq!(status(file("GET", "/api/companies", "")), 403);
        assert_eq!(status(file("DELETE", "/api/issues/x", "")), 403);
        let bad_b64 = file("POST", "/api/issues/x/comments", "")
            .replace(r#""body":"""#, r#""body":"e30","bodyEncoding":"base64""#);
        assert_eq!(status(bad_b64.as_bytes()), 400);
        let other_id = file("GET", "/api/agents/me", "").replace(r#""id":"r1""#, r#""id":"r2""#);
        assert_eq!(status(other_id.as_bytes()), 400);
    }

    #[test]
    fn denial_message_is_paperclips() {
        let refusal = check(
            "r1",
            file("GET", "/api/companies", "").as_bytes(),
            &HostPolicy::default(),
        )
        .unwrap_err();
        assert_eq!(refusal.message, "Route not allowed: GET /api/companies");
        assert_eq!(refusal.decision, Decision::Denied);
    }

    #[test]
    fn oversized_envelope_is_413() {
        let policy = HostPolicy {
            max_body_bytes: 1,
            ..HostPolicy::default()
        };
        let big = file("POST", "/api/issues/x/comments", "").repeat(2000);
        assert_eq!(
            check("r1", big.as_bytes(), &policy).unwrap_err().status,
            413
        );
    }
}
