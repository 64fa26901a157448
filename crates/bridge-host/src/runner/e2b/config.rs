//! Where E2B is and who we are to it, read as E2B's SDKs read it (`E2B_API_KEY`,
//! `E2B_DOMAIN`, `E2B_API_URL`, `E2B_SANDBOX_URL`, `E2B_DEBUG`).

use std::time::Duration;

use crate::proxy::Secret;

/// E2B's default domain.
pub const DEFAULT_DOMAIN: &str = "e2b.app";
/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// The sandbox id E2B's SDKs use in debug mode (no control plane).
pub const DEBUG_SANDBOX_ID: &str = "debug_sandbox_id";
/// Domains whose sandboxes are reached through the shared `sandbox.<domain>` host, routed
/// by headers, as E2B's SDKs do it.
const SHARED_HOST_DOMAINS: &[&str] = &["e2b.app", "e2b.dev", "e2b.pro"];
/// Bound for each control-plane call and each short envd call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The sandbox's time to live, renewed while the bridge runs: if the host dies, E2B ends
/// the sandbox this long after the last renewal.
pub const SANDBOX_TIMEOUT: Duration = Duration::from_secs(300);

/// How to reach E2B.
#[derive(Debug, Clone)]
pub struct E2bConfig {
    /// The API key (`X-API-KEY`); not needed in debug mode. Never logged or sent to the
    /// sandbox.
    pub api_key: Option<Secret>,
    /// The control plane's base URL.
    pub api_url: String,
    /// The domain sandboxes live under (when the control plane names none).
    pub domain: String,
    /// envd's URL for every sandbox, overriding the computed one (tests, proxies).
    pub sandbox_url: Option<String>,
    /// Debug mode: envd at `http://localhost:49983`, no control plane.
    pub debug: bool,
    /// The sandbox user processes run as (`None`: the template's default user).
    pub user: Option<String>,
    /// Bound for each control-plane and short envd call.
    pub request_timeout: Duration,
    /// The sandbox's time to live, renewed at a third of it while the bridge runs.
    pub sandbox_timeout: Duration,
}

impl E2bConfig {
    /// Reads this process's environment as E2B's SDKs do.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The same from any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let debug = get("E2B_DEBUG").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let domain = get("E2B_DOMAIN").unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
        let api_url = get("E2B_API_URL").unwrap_or_else(|| {
            if debug {
                "http://localhost:3000".to_owned()
            } else {
                format!("https://api.{domain}")
            }
        });
        Self {
            api_key: get("E2B_API_KEY").map(Secret::new),
            api_url,
            domain,
            sandbox_url: get("E2B_SANDBOX_URL"),
            debug,
            user: None,
            request_timeout: REQUEST_TIMEOUT,
            sandbox_timeout: SANDBOX_TIMEOUT,
        }
    }

    /// envd's base URL for sandbox `id`, whose record named `domain` (if any).
    pub(crate) fn envd_url(&self, id: &str, domain: Option<&str>) -> String {
        if let Some(url) = &self.sandbox_url {
            return url.trim_end_matches('/').to_owned();
        }
        if self.debug {
            return format!("http://localhost:{ENVD_PORT}");
        }
        let domain = domain.unwrap_or(&self.domain);
        if SHARED_HOST_DOMAINS.contains(&domain) {
            format!("https://sandbox.{domain}")
        } else {
            format!("https://{ENVD_PORT}-{id}.{domain}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> E2bConfig {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        E2bConfig::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn urls_follow_the_sdks() {
        let c = config(&[]);
        assert_eq!(c.api_url, "https://api.e2b.app");
        assert_eq!(c.envd_url("abc", None), "https://sandbox.e2b.app");
        assert_eq!(
            c.envd_url("abc", Some("example.org")),
            "https://49983-abc.example.org"
        );
        let c = config(&[("E2B_DEBUG", "TRUE")]);
        assert_eq!(c.api_url, "http://localhost:3000");
        assert_eq!(c.envd_url("x", None), "http://localhost:49983");
        let c = config(&[
            ("E2B_DOMAIN", "corp.test"),
            ("E2B_SANDBOX_URL", "http://127.0.0.1:9/"),
        ]);
        assert_eq!(c.api_url, "https://api.corp.test");
        assert_eq!(c.envd_url("x", None), "http://127.0.0.1:9");
    }

    #[test]
    fn the_key_never_prints() {
        let c = config(&[("E2B_API_KEY", "e2b_0123abcd")]);
        assert!(!format!("{c:?}").contains("0123abcd"));
    }
}
