//! What the host lets through: the route allowlist, the header allowlists and safe methods.
//!
//! The default routes are Paperclip's own list, kept as data (`route-allowlist.tsv`).

use std::sync::{Arc, OnceLock};

use regex::Regex;

use crate::path::CanonicalPath;

/// Paperclip's default route allowlist, `method<TAB>path_regex` with a header line.
pub const PAPERCLIP_ROUTES_TSV: &str = include_str!("route-allowlist.tsv");

/// Request headers that may travel upstream; everything else is dropped.
pub const DEFAULT_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "idempotency-key",
    "if-match",
    "if-none-match",
    "x-paperclip-github-capability",
];

/// Response headers returned to the agent. Paperclip keeps the first four; agents need the
/// other three too (redirect targets, back-off hints, attachment names).
pub const DEFAULT_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "last-modified",
    "x-paperclip-bridge-outcome",
    "location",
    "retry-after",
    "content-disposition",
];

/// Headers the host itself sets upstream; a request can never supply them.
pub const HOST_OWNED_HEADERS: &[&str] = &["authorization", "x-paperclip-run-id", "host"];

/// A bad route rule.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A TSV line is not `METHOD<TAB>REGEX`.
    #[error("route rule {line}: expected 'METHOD<TAB>REGEX'")]
    Shape {
        /// 1-based line of the TSV text.
        line: usize,
    },
    /// A rule's method is empty or not all upper-case ASCII letters.
    #[error("route rule {line}: '{method}' is not an upper-case HTTP method")]
    Method {
        /// 1-based line (or pair number) of the rule.
        line: usize,
        /// The method as written.
        method: String,
    },
    /// A rule's path pattern does not compile as a regex.
    #[error("route rule {line}: bad regex: {source}")]
    Regex {
        /// 1-based line (or pair number) of the rule.
        line: usize,
        /// Why the regex compiler refused the pattern.
        #[source]
        source: Box<regex::Error>,
    },
    /// A header allowlist entry is not lower-case token characters (the entry given).
    #[error("header name '{0}' must be lower-case token characters")]
    Header(String),
    /// A header allowlist entry names a header the host sets itself ([`HOST_OWNED_HEADERS`]).
    #[error("header '{0}' is set by the host and cannot be allowlisted")]
    HostOwnedHeader(String),
}

/// One allowed method and path pattern.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// The upper-case HTTP method this rule allows, compared exactly.
    pub method: String,
    /// The path regex, anchored as `^(?:...)$`, matched against the canonical path.
    pub pattern: Regex,
}

/// The routes an agent may call. Clones share the compiled rules and their match caches:
/// compiled, Paperclip's 67 rules take about 0.7 MiB, which an orchestrator serving many
/// sandboxes must not pay per bridge.
#[derive(Debug, Clone)]
pub struct RouteAllowlist {
    rules: Arc<[RouteRule]>,
}

impl RouteAllowlist {
    /// Paperclip's default list, compiled once per process and shared by every clone.
    pub fn paperclip_default() -> Self {
        static DEFAULT: OnceLock<RouteAllowlist> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // The list is compiled into the crate and covered by tests, so it parses.
                Self::from_tsv(PAPERCLIP_ROUTES_TSV)
                    .unwrap_or_else(|e| panic!("built-in routes: {e}"))
            })
            .clone()
    }

    /// Parses `method<TAB>regex` lines; a `method` header line, blanks and `#` comments
    /// are skipped.
    pub fn from_tsv(text: &str) -> Result<Self, PolicyError> {
        let mut rules = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') || line.starts_with("method\t") {
                continue;
            }
            let (method, pattern) = line
                .split_once('\t')
                .ok_or(PolicyError::Shape { line: index + 1 })?;
            rules.push(RouteRule::new(index + 1, method, pattern)?);
        }
        Ok(Self::from_rules(rules))
    }

    /// Builds a list from `(method, regex)` pairs, numbering them from 1 in errors.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PolicyError> {
        let rules = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (method, pattern))| RouteRule::new(i + 1, method, pattern))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_rules(rules))
    }

    /// A list of rules already built (e.g. two lists joined).
    pub fn from_rules(rules: Vec<RouteRule>) -> Self {
        Self {
            rules: rules.into(),
        }
    }

    /// Whether `method` on `path` is allowed.
    pub fn allows(&self, method: &str, path: &CanonicalPath) -> bool {
        self.rules
            .iter()
            .any(|r| r.method == method && r.pattern.is_match(path.as_str()))
    }

    /// The rules, in the order they were given.
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }
}

impl RouteRule {
    /// The regex as it was written (without the anchors every rule gets).
    pub fn source(&self) -> &str {
        let anchored = self.pattern.as_str();
        anchored
            .strip_prefix("^(?:")
            .and_then(|s| s.strip_suffix(")$"))
            .unwrap_or(anchored)
    }

    fn new(line: usize, method: &str, pattern: &str) -> Result<Self, PolicyError> {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(PolicyError::Method {
                line,
                method: method.to_owned(),
            });
        }
        // Always anchor, so a rule written without ^...$ cannot open more than it says.
        let pattern =
            Regex::new(&format!("^(?:{})$", pattern.trim())).map_err(|e| PolicyError::Regex {
                line,
                source: Box::new(e),
            })?;
        Ok(Self {
            method: method.to_owned(),
            pattern,
        })
    }
}

/// The 403 message for a denied route, as Paperclip words it.
pub fn route_denied_message(method: &str, path: &str) -> String {
    format!("Route not allowed: {method} {path}")
}

/// Methods without side effects: a timed-out one can be answered as a plain failure.
pub fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Checks a header allowlist entry: lower-case token characters, not host-owned.
pub fn validate_allowed_header(name: &str) -> Result<(), PolicyError> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !token {
        return Err(PolicyError::Header(name.to_owned()));
    }
    if HOST_OWNED_HEADERS.contains(&name) {
        return Err(PolicyError::HostOwnedHeader(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::canonicalize_path;

    fn allowed(method: &str, path: &str) -> bool {
        let list = RouteAllowlist::paperclip_default();
        let path = canonicalize_path(path).unwrap();
        list.allows(method, &path)
    }

    #[test]
    fn the_default_list_is_compiled_once() {
        // Compiled, it takes ~0.7 MiB: per bridge that was most of a host's memory per
        // sandbox at 100 sandboxes.
        let (a, b) = (
            RouteAllowlist::paperclip_default(),
            RouteAllowlist::paperclip_default(),
        );
        assert!(Arc::ptr_eq(&a.rules, &b.rules));
    }

    #[test]
    fn default_list_has_paperclips_67_rules() {
        assert_eq!(RouteAllowlist::paperclip_default().rules().len(), 67);
    }

    #[test]
    fn allowed_routes() {
        assert!(allowed("GET", "/api/agents/me"));
        assert!(allowed("GET", "/api/issues/abc/heartbeat-context"));
        assert!(allowed("POST", "/api/issues/abc/comments"));
        assert!(allowed("GET", "/api/issues/abc/comments/c1"));
        assert!(allowed("PUT", "/api/issues/abc/documents/plan"));
        assert!(allowed("PATCH", "/api/issues/abc"));
        assert!(allowed("POST", "/api/companies/c/issues/i/attachments"));
        assert!(allowed("GET", "/api/openapi.json"));
        assert!(allowed("DELETE", "/api/routine-triggers/t1"));
    }

    #[test]
    fn denied_routes() {
        assert!(!allowed("GET", "/api/companies"));
        assert!(!allowed("DELETE", "/api/issues/abc"));
        assert!(!allowed("POST", "/api/agents/me"), "wrong method");
        assert!(!allowed("GET", "/api/agents/me/"), "trailing slash");
        assert!(!allowed("GET", "/api/agents/me/keys"));
        assert!(!allowed("GET", "/api/openapiXjson"), "escaped dot");
        assert!(!allowed("GET", "/api/issues/abc/comments/c1/x"));
        assert!(!allowed("get", "/api/agents/me"), "methods are upper-case");
        assert!(!allowed("GET", "/prefix/api/agents/me"));
    }

    #[test]
    fn look_alikes_never_reach_the_matcher() {
        assert!(canonicalize_path("/api/agents/me/../../secrets").is_err());
        assert!(canonicalize_path("/api/companies/../agents").is_err());
    }

    #[test]
    fn rules_are_always_anchored() {
        let list = RouteAllowlist::from_pairs([("GET", "/api/x")]).unwrap();
        assert!(list.allows("GET", &canonicalize_path("/api/x").unwrap()));
        assert!(!list.allows("GET", &canonicalize_path("/api/x/y").unwrap()));
        assert!(!list.allows("GET", &canonicalize_path("/z/api/x").unwrap()));
    }

    #[test]
    fn bad_rules_are_errors() {
        assert!(matches!(
            RouteAllowlist::from_tsv("GET ^/a$"),
            Err(PolicyError::Shape { line: 1 })
        ));
        assert!(matches!(
            RouteAllowlist::from_tsv("get\t^/a$"),
            Err(PolicyError::Method { .. })
        ));
        assert!(matches!(
            RouteAllowlist::from_tsv("# c\nGET\t^/a($"),
            Err(PolicyError::Regex { line: 2, .. })
        ));
    }

    #[test]
    fn header_entries_are_checked() {
        assert!(validate_allowed_header("accept").is_ok());
        assert!(validate_allowed_header("Accept").is_err());
        assert!(validate_allowed_header("authorization").is_err());
        assert!(validate_allowed_header("x-paperclip-run-id").is_err());
    }

    #[test]
    fn safe_methods() {
        assert!(is_safe_method("GET") && is_safe_method("HEAD"));
        assert!(!is_safe_method("POST") && !is_safe_method("PATCH"));
    }
}
