//! The three JSON files of queue_v1: request, response and `ready.json`.
//!
//! Field names are exactly the wire names (`createdAt`, `bodyEncoding`, `baseUrl`, ...).
//! Unknown fields are ignored so newer peers can extend the files; missing required fields
//! are an error.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, BodyEncoding, CodecError};

/// Header map of a queue file: lower-case names, repeated values joined with `", "`.
pub type Headers = BTreeMap<String, String>;

/// `requests/<id>.json`: one request from an agent, written by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestFile {
    /// `id`: random UUID chosen by the gateway; equals the file name stem.
    pub id: String,
    /// `method`: the agent's HTTP method, upper-case (`GET`, `POST`, ...).
    pub method: String,
    /// `path`: the URL path alone, without the query (`/api/issues/abc/comments`).
    pub path: String,
    /// `query`: the query including its leading `?`, or `""` when there is none.
    pub query: String,
    /// `headers`: the allowlisted request headers the agent sent.
    pub headers: Headers,
    /// `body`: the request body; UTF-8 text unless `bodyEncoding` says base64.
    pub body: String,
    /// `bodyEncoding`: how to read `body`; absent (and omitted when `None`) means UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<BodyEncoding>,
    /// `createdAt`: when the gateway wrote the request (ISO 8601, UTC).
    pub created_at: String,
}

/// `responses/<id>.json`: the answer to one request, written by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseFile {
    /// `id`: the id of the request this answers.
    pub id: String,
    /// `status`: the HTTP status the gateway returns to the agent.
    pub status: u16,
    /// `headers`: response headers for the agent (the gateway drops `content-length`).
    pub headers: Headers,
    /// `body`: the response body; UTF-8 text unless `bodyEncoding` says base64.
    pub body: String,
    /// `bodyEncoding`: how to read `body`; absent means UTF-8 (Paperclip's host always
    /// sends `base64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<BodyEncoding>,
    /// `completedAt`: when the host wrote the response (ISO 8601, UTC).
    pub completed_at: String,
}

/// `ready.json`: written by the gateway once its socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyFile {
    /// `pid`: the gateway's process id.
    pub pid: u32,
    /// `host`: the IP address the gateway's socket is bound to.
    pub host: String,
    /// `port`: the port actually bound (the real one even when port 0 was asked for).
    pub port: u16,
    /// `baseUrl`: the URL agents call, no `/api` suffix; they get it as `PAPERCLIP_API_URL`.
    pub base_url: String,
    /// `startedAt`: when the gateway, already listening, wrote this file (ISO 8601, UTC).
    pub started_at: String,
}

/// Why a queue file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The file is larger than the envelope limit; it was not parsed.
    #[error("queue file is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The file's size in bytes.
        size: usize,
        /// The envelope limit it exceeds, in bytes.
        limit: usize,
    },
    /// The file is not the JSON object queue_v1 describes.
    #[error("queue file is not valid queue_v1 JSON: {0}")]
    Json(#[from] JsonProblem),
    /// The body could not be decoded.
    #[error(transparent)]
    Body(#[from] CodecError),
}

/// Where and what kind of JSON failure, without any of the text: serde_json's own messages
/// quote the offending value (`invalid type: string "..."`), and queue files are untrusted,
/// so their content must not reach a log or an answer through an error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at line {line}, column {column}")]
pub struct JsonProblem {
    /// The kind of failure, in fixed words (or naming a field of our own schema).
    pub what: String,
    /// The 1-based line where it was found.
    pub line: usize,
    /// The 1-based column where it was found.
    pub column: usize,
}

impl From<serde_json::Error> for JsonProblem {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Data => missing_field(&e)
                .map(|field| format!("missing field `{field}`"))
                .or_else(|| own_message(&e))
                .unwrap_or_else(|| "a field has the wrong type or value".to_owned()),
            Category::Io => "read error".to_owned(),
            Category::Syntax => "syntax error".to_owned(),
            Category::Eof => "unexpected end of input".to_owned(),
        };
        Self {
            what,
            line: e.line(),
            column: e.column(),
        }
    }
}

/// The field a "missing field" error names: one of our own schema's, never the file's
/// text (so it is only believed if it looks like one of ours).
fn missing_field(e: &serde_json::Error) -> Option<String> {
    let text = e.to_string();
    let field = text.strip_prefix("missing field `")?.split('`').next()?;
    let ours = !field.is_empty()
        && field.len() <= 32
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ours.then(|| field.to_owned())
}

/// A message of our own deserializers (the reply bounds in [`crate::ops`] say "a reply
/// ..."): fixed text, never the file's; serde's own messages start otherwise.
fn own_message(e: &serde_json::Error) -> Option<String> {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    let ours = message.starts_with("a reply ")
        && message.len() <= 100
        && message.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    ours.then(|| message.to_owned())
}

/// Parses a queue file, refusing anything over `envelope_limit` bytes before parsing.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], envelope_limit: usize) -> Result<T, WireError> {
    if bytes.len() > envelope_limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit: envelope_limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.into()))
}

/// Serialises a queue file: one JSON object followed by `\n`.
pub fn to_line<T: Serialize>(file: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: all keys are strings.
    let mut line = serde_json::to_vec(file).unwrap_or_default();
    line.push(b'\n');
    line
}

impl RequestFile {
    /// The request body as bytes, checked against the body limit.
    pub fn body_bytes(&self, limit: usize) -> Result<Vec<u8>, CodecError> {
        codec::decode_body(&self.body, self.body_encoding, limit)
    }
}

impl ResponseFile {
    /// Builds a response, choosing the body encoding from the bytes.
    pub fn new(id: &str, status: u16, headers: Headers, body: &[u8], completed_at: String) -> Self {
        let (body, body_encoding) = codec::encode_body(body);
        Self {
            id: id.to_owned(),
            status,
            headers,
            body,
            body_encoding,
            completed_at,
        }
    }

    /// The response body as bytes, checked against the body limit.
    pub fn body_bytes(&self, limit: usize) -> Result<Vec<u8>, CodecError> {
        codec::decode_body(&self.body, self.body_encoding, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = concat!(
        r#"{"id":"3f2b8c1e-0d4a-4e6b-9c7d-1a2b3c4d5e6f","method":"POST","#,
        r#""path":"/api/issues/abc/comments","query":"?x=1","#,
        r#""headers":{"accept":"application/json","content-type":"application/json"},"#,
        r#""body":"{\"body\":\"hi\"}","createdAt":"2026-11-28T16:00:00.000Z"}"#,
        "\n"
    );

    fn request() -> RequestFile {
        RequestFile {
            id: "3f2b8c1e-0d4a-4e6b-9c7d-1a2b3c4d5e6f".into(),
            method: "POST".into(),
            path: "/api/issues/abc/comments".into(),
            query: "?x=1".into(),
            headers: [
                ("accept".to_owned(), "application/json".to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ]
            .into(),
            body: "{\"body\":\"hi\"}".into(),
            body_encoding: None,
            created_at: "2026-11-28T16:00:00.000Z".into(),
        }
    }

    #[test]
    fn request_golden_both_ways() {
        assert_eq!(String::from_utf8(to_line(&request())).unwrap(), REQUEST);
        assert_eq!(
            parse::<RequestFile>(REQUEST.as_bytes(), 1 << 20).unwrap(),
            request()
        );
    }

    #[test]
    fn response_as_paperclip_writes_it_parses() {
        // Paperclip's host always sends base64 bodies and may add fields we do not know.
        let text = r#"{"id":"r1","status":201,"headers":{"content-type":"application/json","etag":"W/\"1\""},"body":"eyJvayI6dHJ1ZX0=","bodyEncoding":"base64","completedAt":"2026-11-28T16:00:01.000Z","extra":1}"#;
        let parsed: ResponseFile = parse(text.as_bytes(), 1 << 20).unwrap();
        assert_eq!(parsed.status, 201);
        assert_eq!(parsed.headers["etag"], "W/\"1\"");
        assert_eq!(parsed.body_bytes(100).unwrap(), br#"{"ok":true}"#);
    }

    #[test]
    fn response_golden_with_binary_body() {
        let file = ResponseFile::new("r2", 200, Headers::new(), &[0xff, 0], "T".into());
        assert_eq!(
            String::from_utf8(to_line(&file)).unwrap(),
            "{\"id\":\"r2\",\"status\":200,\"headers\":{},\"body\":\"/wA=\",\"bodyEncoding\":\"base64\",\"completedAt\":\"T\"}\n"
        );
    }

    #[test]
    fn ready_golden_both_ways() {
        let text = r#"{"pid":42,"host":"127.0.0.1","port":41234,"baseUrl":"http://127.0.0.1:41234","startedAt":"2026-11-28T16:00:00.000Z"}"#;
        let ready = ReadyFile {
            pid: 42,
            host: "127.0.0.1".into(),
            port: 41234,
            base_url: "http://127.0.0.1:41234".into(),
            started_at: "2026-11-28T16:00:00.000Z".into(),
        };
        assert_eq!(to_line(&ready), format!("{text}\n").into_bytes());
        assert_eq!(parse::<ReadyFile>(text.as_bytes(), 4096).unwrap(), ready);
    }

    #[test]
    fn missing_required_field_is_an_error() {
        let text =
            r#"{"id":"a","method":"GET","path":"/api/x","headers":{},"body":"","createdAt":"t"}"#;
        let err = parse::<RequestFile>(text.as_bytes(), 4096).unwrap_err();
        assert!(err.to_string().contains("query"), "{err}");
    }

    #[test]
    fn oversized_envelope_is_refused_before_parsing() {
        let err = parse::<RequestFile>(REQUEST.as_bytes(), 10).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { limit: 10, .. }));
    }

    #[test]
    fn explicit_utf8_encoding_parses() {
        let text = REQUEST.replace("\"createdAt\"", "\"bodyEncoding\":\"utf8\",\"createdAt\"");
        let parsed: RequestFile = parse(text.as_bytes(), 1 << 20).unwrap();
        assert_eq!(parsed.body_encoding, Some(BodyEncoding::Utf8));
        assert_eq!(parsed.body_bytes(100).unwrap(), b"{\"body\":\"hi\"}");
    }

    #[test]
    fn parse_errors_never_quote_the_file() {
        for text in [
            r#"{"id":"SECRET-1","status":"SECRET-2","headers":{},"body":"","completedAt":"t"}"#,
            r#"{"id":"r1","status":200,"headers":{"a":1},"body":"SECRET-3","completedAt":"t"}"#,
            r#"{"id":"r1","bodyEncoding":"SECRET-4"}"#,
            "SECRET-5",
        ] {
            let e = parse::<ResponseFile>(text.as_bytes(), 1 << 20).unwrap_err();
            let mut shown = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                shown.push_str(&inner.to_string());
                source = inner.source();
            }
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("line 1"), "{shown}");
        }
    }
}
