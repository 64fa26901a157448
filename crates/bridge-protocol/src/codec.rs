//! Body codec: UTF-8 or canonical base64 bodies, and the size limits around them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Default body limit: 10 MiB + 64 KiB, as Paperclip's bridge.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024 + 64 * 1024;

/// How a body string is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// The string is the body, as UTF-8 text.
    Utf8,
    /// The string is standard, padded, canonical base64 of the body.
    Base64,
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The base64 text is malformed or not in its one canonical form.
    #[error("body is not canonical base64")]
    NonCanonicalBase64,
    /// The decoded body is larger than the limit.
    #[error("body is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The decoded body's size in bytes.
        size: usize,
        /// The body limit it exceeds, in bytes.
        limit: usize,
    },
}

/// Largest queue file (request or response) allowed for a body limit: JSON may escape one
/// byte as six characters, plus 64 KiB for the rest of the envelope.
pub fn envelope_limit(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_mul(6).saturating_add(64 * 1024)
}

/// Encodes bytes for a queue file: UTF-8 text stays text, anything else becomes base64.
pub fn encode_body(bytes: &[u8]) -> (String, Option<BodyEncoding>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (encode_base64(bytes), Some(BodyEncoding::Base64)),
    }
}

/// Standard padded base64, the only form queue_v1 accepts.
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a body string, checking base64 is canonical and the result fits `limit`.
pub fn decode_body(
    body: &str,
    encoding: Option<BodyEncoding>,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    let bytes = match encoding {
        None | Some(BodyEncoding::Utf8) => body.as_bytes().to_vec(),
        Some(BodyEncoding::Base64) => decode_canonical_base64(body)?,
    };
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Decodes base64 only if it is canonical: re-encoding must give back the same text.
pub fn decode_canonical_base64(text: &str) -> Result<Vec<u8>, CodecError> {
    if text.len() % 4 != 0 {
        return Err(CodecError::NonCanonicalBase64);
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| CodecError::NonCanonicalBase64)?;
    if STANDARD.encode(&bytes) != text {
        return Err(CodecError::NonCanonicalBase64);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_text_stays_text() {
        assert_eq!(encode_body(b"{\"a\":1}"), ("{\"a\":1}".to_owned(), None));
    }

    #[test]
    fn binary_becomes_base64_and_round_trips() {
        let bytes = [0u8, 0xff, 0xfe, 0x80, 10];
        let (text, enc) = encode_body(&bytes);
        assert_eq!(enc, Some(BodyEncoding::Base64));
        assert_eq!(text, "AP/+gAo=");
        assert_eq!(decode_body(&text, enc, 100).unwrap(), bytes);
    }

    #[test]
    fn non_canonical_base64_is_rejected() {
        for bad in [
            "AP/+gAo",
            "AP/+gAp=",
            "AP_-gAo=",
            "AP/+ gAo=",
            "====",
            "A===",
        ] {
            assert_eq!(
                decode_body(bad, Some(BodyEncoding::Base64), 100),
                Err(CodecError::NonCanonicalBase64),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn empty_base64_is_the_empty_body() {
        assert_eq!(decode_body("", Some(BodyEncoding::Base64), 0).unwrap(), b"");
    }

    #[test]
    fn exactly_at_the_limit_passes_and_one_over_fails() {
        assert_eq!(decode_body("abcd", None, 4).unwrap(), b"abcd");
        assert_eq!(
            decode_body("abcde", None, 4),
            Err(CodecError::TooLarge { size: 5, limit: 4 })
        );
        // The limit applies to decoded bytes, not to the base64 text.
        assert_eq!(
            decode_body("YWJjZA==", Some(BodyEncoding::Base64), 4).unwrap(),
            b"abcd"
        );
        assert!(decode_body("YWJjZGU=", Some(BodyEncoding::Base64), 4).is_err());
    }

    #[test]
    fn unknown_encoding_does_not_parse() {
        let parsed: Result<BodyEncoding, _> = serde_json::from_str("\"gzip\"");
        assert!(parsed.is_err());
        let parsed: BodyEncoding = serde_json::from_str("\"utf8\"").unwrap();
        assert_eq!(parsed, BodyEncoding::Utf8);
    }

    #[test]
    fn envelope_limit_allows_worst_case_escaping() {
        assert_eq!(envelope_limit(10), 60 + 65536);
        assert_eq!(envelope_limit(usize::MAX), usize::MAX);
    }
}
