//! The host's policy: which routes, which headers, how large. Paperclip's defaults, or a
//! TOML file. A bad file is an error at start-up, never a silently open bridge.

use std::path::{Path, PathBuf};

use bridge_protocol::codec::DEFAULT_MAX_BODY_BYTES;
use bridge_protocol::policy::{
    validate_allowed_header, PolicyError, RouteAllowlist, DEFAULT_REQUEST_HEADERS,
    DEFAULT_RESPONSE_HEADERS,
};
use serde::Deserialize;

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
    routes: Option<Vec<RouteEntry>>,
    #[serde(default)]
    extend_default_routes: bool,
    request_headers: Option<Vec<String>>,
    response_headers: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    method: String,
    path: String,
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

    /// Parses TOML policy text; the error says what is wrong.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut policy = Self::default();
        if let Some(routes) = &file.routes {
            let pairs = routes.iter().map(|r| (r.method.as_str(), r.path.as_str()));
            let given = RouteAllowlist::from_pairs(pairs).map_err(|e| e.to_string())?;
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
            policy.request_headers = checked_headers(headers).map_err(|e| e.to_string())?;
        }
        if let Some(headers) = file.response_headers {
            policy.response_headers = checked_headers(headers).map_err(|e| e.to_string())?;
        }
        if let Some(max) = file.max_body_bytes {
            if max == 0 || max > 1 << 30 {
                return Err(format!(
                    "max_body_bytes = {max} must be between 1 and 1 GiB"
                ));
            }
            policy.max_body_bytes = max;
        }
        Ok(policy)
    }
}

fn checked_headers(headers: Vec<String>) -> Result<Vec<String>, PolicyError> {
    headers
        .iter()
        .try_for_each(|h| validate_allowed_header(h))?;
    Ok(headers)
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
    fn missing_file_names_the_path() {
        let err = HostPolicy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/policy.toml"));
    }
}
