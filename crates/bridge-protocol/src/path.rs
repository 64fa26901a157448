//! Path canonicalisation: the one form of a request path that is both checked against the
//! allowlist and forwarded upstream, so the two can never disagree.
//!
//! Paperclip matches the raw path and forwards the URL-normalised one, so
//! `/api/companies/../agents` passes as a company read and reaches `/api/agents`. Here any
//! path that a URL parser could rewrite is refused instead.

use std::fmt;

/// Longest request path accepted.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// Why a path was refused; each becomes a 400 with this text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    /// The path does not start with `/` (an absolute URL, `*`, a relative or empty path).
    #[error("path is not in origin form (must start with a single '/')")]
    NotOriginForm,
    /// A `.` or `..` segment, literal or percent-encoded, that a URL parser would resolve.
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    /// A `%2F`, which a server may decode into a segment separator.
    #[error("path contains an encoded '/' (%2F)")]
    EncodedSlash,
    /// A backslash, literal or `%5C`, which some URL parsers treat as `/`.
    #[error("path contains a backslash")]
    Backslash,
    /// A NUL byte, literal or `%00`.
    #[error("path contains a NUL byte")]
    Nul,
    /// An empty segment (`//`), which normalisers may collapse.
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    /// A `%` not followed by two hex digits.
    #[error("path contains a malformed percent escape")]
    BadPercentEncoding,
    /// A byte that is not an RFC 3986 path character (space, `?`, `#`, non-ASCII, ...).
    #[error("path contains a character not allowed in a URL path")]
    InvalidCharacter,
    /// The path is longer than [`MAX_PATH_LEN`] bytes.
    #[error("path is longer than 8 KiB")]
    TooLong,
    /// The query is not `""` or `?` followed by URL characters and well-formed escapes
    /// (or is longer than [`MAX_PATH_LEN`]).
    #[error("query must be empty or start with '?' and contain only URL characters")]
    BadQuery,
}

/// A request path that passed canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalPath(String);

impl CanonicalPath {
    /// The canonical path: what the allowlist checks and what is forwarded upstream.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Canonicalises a request path, or says why it is refused.
///
/// The canonical form decodes percent-escapes of unreserved characters (`%61` → `a`) and
/// upper-cases the hex of the others, so one resource has one spelling.
pub fn canonicalize_path(path: &str) -> Result<CanonicalPath, PathRejection> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathRejection::TooLong);
    }
    if !path.starts_with('/') {
        return Err(PathRejection::NotOriginForm);
    }
    if path.contains('\0') {
        return Err(PathRejection::Nul);
    }
    if path.contains('\\') {
        return Err(PathRejection::Backslash);
    }
    if path.contains("//") {
        return Err(PathRejection::EmptySegment);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let segment = canonical_segment(segment)?;
        if segment == "." || segment == ".." {
            return Err(PathRejection::DotSegment);
        }
        out.push_str(&segment);
    }
    Ok(CanonicalPath(out))
}

/// Canonicalises a query string (`""` or `?...`): URL characters and well-formed escapes
/// only, with `'` written `%27`.
///
/// A WHATWG URL parser (reqwest's) percent-encodes `'` in the query of an `http(s)` URL,
/// so the query checked here would not be the one sent; the canonical form is already
/// what the parser leaves unchanged.
pub fn canonicalize_query(query: &str) -> Result<String, PathRejection> {
    let Some(rest) = query.strip_prefix('?') else {
        return if query.is_empty() {
            Ok(String::new())
        } else {
            Err(PathRejection::BadQuery)
        };
    };
    if query.len() > MAX_PATH_LEN {
        return Err(PathRejection::BadQuery);
    }
    let bytes = rest.as_bytes();
    let mut out = String::with_capacity(query.len() + 8);
    out.push('?');
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            hex_pair(bytes, i).ok_or(PathRejection::BadQuery)?;
            out.push_str(&rest[i..i + 3]);
            i += 3;
            continue;
        }
        match b {
            b'\'' => out.push_str("%27"),
            b if is_pchar(b) || b == b'/' || b == b'?' => out.push(char::from(b)),
            _ => return Err(PathRejection::BadQuery),
        }
        i += 1;
    }
    Ok(out)
}

/// One segment in canonical form; rejects what could change its meaning when decoded.
fn canonical_segment(segment: &str) -> Result<String, PathRejection> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let decoded = hex_pair(bytes, i).ok_or(PathRejection::BadPercentEncoding)?;
            match decoded {
                b'/' => return Err(PathRejection::EncodedSlash),
                b'\\' => return Err(PathRejection::Backslash),
                0 => return Err(PathRejection::Nul),
                d if is_unreserved(d) => out.push(char::from(d)),
                d => out.push_str(&format!("%{d:02X}")),
            }
            i += 3;
            continue;
        }
        if !is_pchar(b) {
            return Err(PathRejection::InvalidCharacter);
        }
        out.push(char::from(b));
        i += 1;
    }
    Ok(out)
}

/// The byte a `%XX` escape at `bytes[i]` stands for.
fn hex_pair(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = char::from(*bytes.get(i + 1)?).to_digit(16)?;
    let lo = char::from(*bytes.get(i + 2)?).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%` (escapes are handled apart).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

#[cfg(test)]
mod tests {
    use super::PathRejection::*;
    use super::*;

    fn reason(path: &str) -> PathRejection {
        canonicalize_path(path).expect_err(path)
    }

    #[test]
    fn plain_paths_pass_unchanged() {
        for path in [
            "/",
            "/api/agents/me",
            "/api/issues/abc-1/comments",
            "/api/x/",
        ] {
            assert_eq!(canonicalize_path(path).unwrap().as_str(), path);
        }
    }

    #[test]
    fn escapes_are_normalised() {
        assert_eq!(
            canonicalize_path("/api/%61gents/me").unwrap().as_str(),
            "/api/agents/me"
        );
        assert_eq!(
            canonicalize_path("/api/issues/a%3ab%20c").unwrap().as_str(),
            "/api/issues/a%3Ab%20c"
        );
    }

    #[test]
    fn each_attack_has_its_reason() {
        assert_eq!(reason("/api/companies/../agents"), DotSegment);
        assert_eq!(reason("/api/./agents"), DotSegment);
        assert_eq!(reason("/api/%2e%2e/x"), DotSegment);
        assert_eq!(reason("/api/.%2E/x"), DotSegment);
        assert_eq!(reason("/api/agents/me/../../secrets"), DotSegment);
        assert_eq!(reason("/api/a%2fb"), EncodedSlash);
        assert_eq!(reason("/api/a%2Fb"), EncodedSlash);
        assert_eq!(reason("//api"), EmptySegment);
        assert_eq!(reason("/api//agents"), EmptySegment);
        assert_eq!(reason("/api/a\\b"), Backslash);
        assert_eq!(reason("/api/a%5cb"), Backslash);
        assert_eq!(reason("/api/a\0b"), Nul);
        assert_eq!(reason("/api/a%00b"), Nul);
        assert_eq!(reason("http://x/api"), NotOriginForm);
        assert_eq!(reason("api/x"), NotOriginForm);
        assert_eq!(reason(""), NotOriginForm);
        assert_eq!(reason("*"), NotOriginForm);
        assert_eq!(reason("/api/a%zz"), BadPercentEncoding);
        assert_eq!(reason("/api/a%2"), BadPercentEncoding);
        assert_eq!(reason("/api/a b"), InvalidCharacter);
        assert_eq!(reason("/api/a?b"), InvalidCharacter);
        assert_eq!(reason("/api/a#b"), InvalidCharacter);
        assert_eq!(reason("/api/ä"), InvalidCharacter);
        assert_eq!(reason(&format!("/{}", "a".repeat(MAX_PATH_LEN))), TooLong);
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(
            canonicalize_path("/api/openapi.json").unwrap().as_str(),
            "/api/openapi.json"
        );
        assert!(canonicalize_path("/api/...").is_ok());
    }

    #[test]
    fn queries() {
        let ok = |q: &str| canonicalize_query(q).unwrap();
        assert_eq!(ok(""), "");
        assert_eq!(ok("?a=1&b=%20x/y?z"), "?a=1&b=%20x/y?z");
        assert_eq!(ok("?q='x'"), "?q=%27x%27");
        assert_eq!(canonicalize_query("a=1"), Err(BadQuery));
        assert_eq!(canonicalize_query("?a=1#frag"), Err(BadQuery));
        assert_eq!(canonicalize_query("?a= 1"), Err(BadQuery));
        assert_eq!(canonicalize_query("?a=%g1"), Err(BadQuery));
        assert_eq!(canonicalize_query("?a=%2"), Err(BadQuery));
    }
}
