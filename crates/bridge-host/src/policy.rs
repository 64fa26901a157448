//! The host's policy: which routes, which headers, how large. Paperclip's defaults, or a
//! TOML file. A bad file is an error at start-up, never a silently open bridge.

use std::path::{Path, PathBuf};

use bridge_protocol::codec::DEFAULT_MAX_BODY_BYTES;
use bridge_protocol::policy::{
    validate_allowed_header, PolicyError, RouteAllowlist, DEFAULT_REQUEST_HEADERS,
    DEFAULT_RESPONSE_HEADERS,
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// What the worker lets through.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The routes an agent may call (Paperclip's default allowlist unless a file says more).
    pub routes: RouteAllowlist,
    /// Request headers forwarded upstream (lower-case).
    pub request_headers: Vec<String>,
    /// Response headers returned to the agent (lower-case).
    pub response_headers: Vec<String>,
    /// Largest request or response body.
    pub max_body_bytes: usize,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            routes: RouteAllowlist::paperclip_default(),
            request_headers: owned(DEFAULT_REQUEST_HEADERS),
            response_headers: owned(DEFAULT_RESPONSE_HEADERS),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy.
    #[error("policy file {path}: {message}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The file's shape. Every field is optional; unknown fields are errors (a typo must not
/// quietly fall back to a default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Replaces Paperclip's list (or extends it with `extend_default_routes = true`).
    routes: Option<Vec<Spanned<RouteEntry>>>,
    #[serde(default)]
    extend_default_routes: bool,
    request_headers: Option<Vec<Spanned<String>>>,
    response_headers: Option<Vec<Spanned<String>>>,
    max_body_bytes: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    method: String,
    path: String,
}

/// The effective policy as a file says it (`paperclip-bridge policy show`).
#[derive(Debug, Serialize)]
struct PolicyOut<'a> {
    max_body_bytes: usize,
    request_headers: &'a [String],
    response_headers: &'a [String],
    routes: Vec<RouteEntry>,
}

impl HostPolicy {
    /// Loads a TOML policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|message| PolicyFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML policy text; the error says what is wrong, and on which line.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        let mut policy = Self::default();
        if let Some(routes) = &file.routes {
            let pairs = routes
                .iter()
                .map(|r| (r.get_ref().method.as_str(), r.get_ref().path.as_str()));
            let given = RouteAllowlist::from_pairs(pairs).map_err(|e| {
                let at = route_number(&e).and_then(|n| routes.get(n - 1));
                match at {
                    Some(route) => format!("line {}: {e}", line(route.span())),
                    None => e.to_string(),
                }
            })?;
            policy.routes = if file.extend_default_routes {
                let mut all = policy.routes.rules().to_vec();
                all.extend(given.rules().iter().cloned());
                RouteAllowlist::from_rules(all)
            } else {
                given
            };
        } else if file.extend_default_routes {
            return Err("extend_default_routes needs a routes list".into());
        }
        if let Some(headers) = file.request_headers {
            policy.request_headers = checked_headers(text, headers)?;
        }
        if let Some(headers) = file.response_headers {
            policy.response_headers = checked_headers(text, headers)?;
        }
        if let Some(max) = file.max_body_bytes {
            let (span, max) = (max.span(), max.into_inner());
            if max == 0 || max > 1 << 30 {
                return Err(format!(
                    "line {}: max_body_bytes = {max} must be between 1 and 1 GiB",
                    line(span)
                ));
            }
            policy.max_body_bytes = max;
        }
        Ok(policy)
    }

    /// The policy as a TOML file that loads back to the same policy: every route (the
    /// defaults included, written out), header list and limit.
    pub fn to_toml(&self) -> String {
        let out = PolicyOut {
            max_body_bytes: self.max_body_bytes,
            request_headers: &self.request_headers,
            response_headers: &self.response_headers,
            routes: self
                .routes
                .rules()
                .iter()
                .map(|r| RouteEntry {
                    method: r.method.clone(),
                    path: r.source().to_owned(),
                })
                .collect(),
        };
        // Plain strings, numbers and tables: serialising them cannot fail.
        toml::to_string(&out).unwrap_or_default()
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// Which route (1-based) a route error is about.
fn route_number(e: &PolicyError) -> Option<usize> {
    match e {
        PolicyError::Shape { line }
        | PolicyError::Method { line, .. }
        | PolicyError::Regex { line, .. } => Some(*line),
        _ => None,
    }
}

fn checked_headers(text: &str, headers: Vec<Spanned<String>>) -> Result<Vec<String>, String> {
    headers
        .into_iter()
        .map(|h| {
            let line = line_of(text, h.span().start);
            let name = h.into_inner();
            validate_allowed_header(&name)
                .map(|()| name)
                .map_err(|e| format!("line {line}: {e}"))
        })
        .collect()
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_protocol::canonicalize_path;

    fn allows(policy: &HostPolicy, method: &str, path: &str) -> bool {
        policy
            .routes
            .allows(method, &canonicalize_path(path).unwrap())
    }

    #[test]
    fn a_good_file_replaces_the_defaults() {
        let policy = HostPolicy::from_toml_str(
            r#"
            routes = [ { method = "GET", path = "^/api/agents/me$" } ]
            request_headers = ["accept"]
            response_headers = ["content-type", "etag"]
            max_body_bytes = 1024
            "#,
        )
        .unwrap();
        assert!(allows(&policy, "GET", "/api/agents/me"));
        assert!(!allows(&policy, "GET", "/api/issues/x"));
        assert_eq!(policy.request_headers, ["accept"]);
        assert_eq!(policy.max_body_bytes, 1024);
    }

    #[test]
    fn routes_can_extend_the_defaults() {
        let policy = HostPolicy::from_toml_str(
            "extend_default_routes = true\nroutes = [ { method = \"GET\", path = \"^/api/extra$\" } ]",
        )
        .unwrap();
        assert!(allows(&policy, "GET", "/api/extra"));
        assert!(allows(&policy, "GET", "/api/agents/me"));
    }

    #[test]
    fn an_empty_file_is_paperclips_policy() {
        let policy = HostPolicy::from_toml_str("").unwrap();
        assert_eq!(policy.routes.rules().len(), 67);
    }

    #[test]
    fn bad_files_are_errors() {
        for (text, says) in [
            ("rotues = []", "unknown field"),
            (
                "routes = [ { method = \"GET\", path = \"^/a($\" } ]",
                "regex",
            ),
            (
                "routes = [ { method = \"get\", path = \"^/a$\" } ]",
                "method",
            ),
            ("request_headers = [\"authorization\"]", "set by the host"),
            ("response_headers = [\"Bad Header\"]", "lower-case"),
            ("max_body_bytes = 0", "between"),
            ("extend_default_routes = true", "needs a routes list"),
        ] {
            let err = HostPolicy::from_toml_str(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let text = "max_body_bytes = 10\nroutes = [\n  { method = \"GET\", path = \"^/a$\" },\n  { method = \"get\", path = \"^/b$\" },\n]\n";
        let err = HostPolicy::from_toml_str(text).unwrap_err();
        assert!(err.starts_with("line 4:"), "{err}");
        let err =
            HostPolicy::from_toml_str("\n\nrequest_headers = [\"accept\", \"authorization\"]")
                .unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        let err = HostPolicy::from_toml_str("\nmax_body_bytes = 0").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = HostPolicy::from_toml_str("x = [").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_shown_policy_loads_back_to_the_same_policy() {
        let policy = HostPolicy::from_toml_str(
            "extend_default_routes = true\nroutes = [ { method = \"POST\", path = \"^/api/extra/[^/]+$\" } ]\nrequest_headers = [\"accept\"]",
        )
        .unwrap();
        let shown = policy.to_toml();
        let again = HostPolicy::from_toml_str(&shown).unwrap();
        assert_eq!(again.to_toml(), shown);
        assert_eq!(again.routes.rules().len(), 68);
        assert!(allows(&again, "POST", "/api/extra/x"));
        assert!(!allows(&again, "POST", "/api/extra/x/y"));
        assert_eq!(again.request_headers, ["accept"]);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = HostPolicy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/policy.toml"));
    }
}
