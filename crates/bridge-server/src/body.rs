//! Reading and classifying request bodies: JSON passes, multipart uploads to the
//! attachment route pass as base64, anything else is 415. A request without a body needs
//! no content type.

use std::time::Duration;

use axum::body::BodyDataStream;
use axum::http::{HeaderMap, Method};
use bridge_protocol::codec::{encode_base64, BodyEncoding};
use futures_util::StreamExt as _;

/// How long a client may take to send its body.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge,
    Unsupported(String),
    Broken(String),
}

/// Most bytes of a refused body read and thrown away before the answer (see [`linger`]).
pub(crate) const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Longest time spent throwing a refused body away before the answer.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: &mut BodyDataStream,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(BodyError::Broken("the body took too long to arrive".into())))
}

/// Reads and throws away what is left of a refused body, up to [`LINGER_BYTES`] and
/// [`LINGER_TIME`], so the client reads the refusal: a server that answers and closes
/// while the client still sends makes many clients (Node's fetch among them) fail with
/// EPIPE or a reset instead of showing the status. Returns whether the body was all read.
pub(crate) async fn linger(body: &mut BodyDataStream) -> bool {
    let drain = async {
        let mut thrown = 0usize;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { return false };
            thrown += chunk.len();
            if thrown > LINGER_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(LINGER_TIME, drain)
        .await
        .unwrap_or(false)
}

/// How a body of the declared type travels in the request file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// JSON: as text (base64 only if it is not UTF-8).
    Json,
    /// A multipart upload to the attachment route: base64.
    Upload,
}

/// The declared content type's [`Kind`], or why it is refused.
fn kind(method: &Method, path: &str, headers: &HeaderMap) -> Result<Kind, BodyError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if is_json(mime) {
        return Ok(Kind::Json);
    }
    if mime == "multipart/form-data" && method == Method::POST && is_attachment_route(path) {
        return Ok(Kind::Upload);
    }
    Err(BodyError::Unsupported(if mime.is_empty() {
        "a request body needs a JSON content type".into()
    } else {
        format!("content type {mime} is not accepted (JSON, or multipart to the attachment route)")
    }))
}

/// Refuses a declared body of a type that will not be accepted, before reading it.
pub(crate) fn check_declared(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), BodyError> {
    let declared = headers.contains_key("transfer-encoding")
        || (headers.contains_key("content-length") && declared_length(headers) != Some(0));
    match declared {
        true => kind(method, path, headers).map(|_| ()),
        false => Ok(()),
    }
}

/// The `content-length` as hyper reads it: `00` is 0, and a list of equal values (`0, 0`)
/// is that value (hyper has already refused unequal ones).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get("content-length")?.to_str().ok()?;
    value
        .split(',')
        .map(|part| part.trim().parse::<u64>().ok())
        .reduce(|a, b| if a == b { a } else { None })
        .flatten()
}

/// Encodes a body for the request file, or says why its type is refused.
pub(crate) fn encode(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<(String, Option<BodyEncoding>), BodyError> {
    if body.is_empty() {
        return Ok((String::new(), None));
    }
    Ok(match kind(method, path, headers)? {
        Kind::Json => match String::from_utf8(body) {
            Ok(text) => (text, None),
            // Not UTF-8: carry the bytes exactly; the upstream decides what it thinks.
            Err(e) => (encode_base64(e.as_bytes()), Some(BodyEncoding::Base64)),
        },
        Kind::Upload => (encode_base64(&body), Some(BodyEncoding::Base64)),
    })
}

fn is_json(mime: &str) -> bool {
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// `POST /api/companies/:c/issues/:i/attachments`.
fn is_attachment_route(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "api", "companies", c, "issues", i, "attachments"] if !c.is_empty() && !i.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", content_type.parse().unwrap());
        h
    }

    #[test]
    fn an_empty_body_needs_no_type_however_its_length_is_written() {
        for length in ["0", "00", "0, 0"] {
            let mut h = HeaderMap::new();
            h.insert("content-length", length.parse().unwrap());
            assert_eq!(
                check_declared(&Method::POST, "/api/x", &h),
                Ok(()),
                "{length}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert("content-length", "01".parse().unwrap());
        assert!(check_declared(&Method::POST, "/api/x", &h).is_err());
    }

    #[test]
    fn json_passes_as_text() {
        for json in [
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            let out = encode(&Method::POST, "/api/x", &headers(json), b"{}".to_vec());
            assert_eq!(out, Ok(("{}".into(), None)), "{json}");
        }
    }

    #[test]
    fn invalid_utf8_json_is_carried_as_base64() {
        let out = encode(
            &Method::POST,
            "/api/x",
            &headers("application/json"),
            vec![0xff],
        );
        assert_eq!(out, Ok(("/w==".into(), Some(BodyEncoding::Base64))));
    }

    #[test]
    fn multipart_only_to_the_attachment_route() {
        let h = headers("multipart/form-data; boundary=x");
        let ok = encode(
            &Method::POST,
            "/api/companies/c/issues/i/attachments",
            &h,
            b"--x".to_vec(),
        );
        assert_eq!(ok, Ok(("LS14".into(), Some(BodyEncoding::Base64))));
        let refused = encode(&Method::POST, "/api/issues/i/comments", &h, b"--x".to_vec());
        assert!(matches!(refused, Err(BodyError::Unsupported(_))));
    }

    #[test]
    fn empty_bodies_need_no_type_but_others_do() {
        assert_eq!(
            encode(&Method::DELETE, "/x", &HeaderMap::new(), vec![]),
            Ok((String::new(), None))
        );
        assert!(matches!(
            encode(&Method::POST, "/x", &headers("text/plain"), b"hi".to_vec()),
            Err(BodyError::Unsupported(_))
        ));
        assert!(matches!(
            encode(&Method::POST, "/x", &HeaderMap::new(), b"hi".to_vec()),
            Err(BodyError::Unsupported(_))
        ));
    }
}
