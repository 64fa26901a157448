//! Reading and classifying request bodies: JSON passes, multipart uploads to the
//! attachment route pass as base64, anything else is 415. A request without a body needs
//! no content type.

use std::time::Duration;

use axum::body::Body;
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

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
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
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if is_json(mime) {
        return Ok(match String::from_utf8(body) {
            Ok(text) => (text, None),
            // Not UTF-8: carry the bytes exactly; the upstream decides what it thinks.
            Err(e) => (encode_base64(e.as_bytes()), Some(BodyEncoding::Base64)),
        });
    }
    if mime == "multipart/form-data" && method == Method::POST && is_attachment_route(path) {
        return Ok((encode_base64(&body), Some(BodyEncoding::Base64)));
    }
    Err(BodyError::Unsupported(if mime.is_empty() {
        "a request body needs a JSON content type".into()
    } else {
        format!("content type {mime} is not accepted (JSON, or multipart to the attachment route)")
    }))
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
    fn json_passes_as_text() {
        let out = encode(
            &Method::POST,
            "/api/x",
            &headers("application/json; charset=utf-8"),
            b"{}".to_vec(),
        );
        assert_eq!(out, Ok(("{}".into(), None)));
        let out = encode(
            &Method::POST,
            "/api/x",
            &headers("application/merge-patch+json"),
            b"{}".to_vec(),
        );
        assert_eq!(out, Ok(("{}".into(), None)));
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
