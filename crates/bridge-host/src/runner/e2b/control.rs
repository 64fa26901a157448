//! E2B's control plane (REST): create or connect to a sandbox, renew its time to live,
//! kill it. Every call is bounded in time and names itself in its errors.

use std::time::Duration;

use serde::Serialize;

use super::config::E2bConfig;
use super::envd::{bounded_body, message_of};
use super::error::E2bError;
use super::wire::SandboxRecord;
use crate::proxy::Secret;

/// Longest sandbox id or template name we send in a URL.
const MAX_NAME: usize = 128;
/// Bound for creating a sandbox (as E2B's SDKs allow it).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Oldest envd the runner works with: `CloseStdin` came in 0.5.2.
pub(crate) const MIN_ENVD: (u32, u32, u32) = (0, 5, 2);

/// The control plane, with our API key.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    http: reqwest::Client,
    base: String,
    key: Secret,
    timeout: Duration,
}

#[derive(Serialize)]
struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    timeout: u64,
}

#[derive(Serialize)]
struct Timeout {
    timeout: u64,
}

impl Control {
    pub(crate) fn new(config: &E2bConfig) -> Result<Self, E2bError> {
        let Some(key) = &config.api_key else {
            return Err(E2bError::Config(
                "E2B needs an API key: set E2B_API_KEY (or pass a key file), or E2B_DEBUG=true for a local envd".into(),
            ));
        };
        // No redirects: the API key goes to the configured control plane only.
        let http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .timeout(CREATE_TIMEOUT.max(config.request_timeout))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| E2bError::Config(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: config.api_url.trim_end_matches('/').to_owned(),
            key: key.clone(),
            timeout: config.request_timeout,
        })
    }

    /// `POST /v2/sandboxes`: a new sandbox from `template`, living `ttl` unless renewed.
    pub(crate) async fn create(
        &self,
        template: &str,
        ttl: Duration,
    ) -> Result<SandboxRecord, E2bError> {
        const CALL: &str = "E2B POST /v2/sandboxes";
        checked_name(CALL, "template", template)?;
        let body = NewSandbox {
            template_id: template,
            timeout: ttl.as_secs(),
        };
        let response = self
            .send(CALL, self.http.post(self.url("/v2/sandboxes")).json(&body))
            .await?;
        record(CALL, response).await
    }

    /// `POST /v2/sandboxes/{id}/connect`: a running (or paused) sandbox, and its token.
    pub(crate) async fn connect(&self, id: &str, ttl: Duration) -> Result<SandboxRecord, E2bError> {
        const CALL: &str = "E2B POST /v2/sandboxes/{id}/connect";
        checked_name(CALL, "sandbox id", id)?;
        let url = self.url(&format!("/v2/sandboxes/{id}/connect"));
        let body = Timeout {
            timeout: ttl.as_secs(),
        };
        let response = self.send(CALL, self.http.post(url).json(&body)).await?;
        record(CALL, response).await
    }

    /// `POST /sandboxes/{id}/timeout`: the sandbox lives `ttl` from now.
    pub(crate) async fn set_timeout(&self, id: &str, ttl: Duration) -> Result<(), E2bError> {
        const CALL: &str = "E2B POST /sandboxes/{id}/timeout";
        checked_name(CALL, "sandbox id", id)?;
        let url = self.url(&format!("/sandboxes/{id}/timeout"));
        let body = Timeout {
            timeout: ttl.as_secs(),
        };
        self.send(CALL, self.http.post(url).json(&body))
            .await
            .map(drop)
    }

    /// `DELETE /sandboxes/{id}`: the sandbox ends (already gone counts as done).
    pub(crate) async fn kill(&self, id: &str) -> Result<(), E2bError> {
        const CALL: &str = "E2B DELETE /sandboxes/{id}";
        checked_name(CALL, "sandbox id", id)?;
        match self
            .send(
                CALL,
                self.http.delete(self.url(&format!("/sandboxes/{id}"))),
            )
            .await
        {
            Err(E2bError::Status { status: 404, .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        call: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, E2bError> {
        let mut key = reqwest::header::HeaderValue::from_str(self.key.expose()).map_err(|_| {
            E2bError::Config(
                "the E2B API key is not a valid header value (a stray newline?)".into(),
            )
        })?;
        key.set_sensitive(true);
        let sent = request.header("x-api-key", key).send().await;
        let response = sent.map_err(|e| {
            if e.is_timeout() {
                E2bError::TimedOut {
                    call,
                    ms: self.timeout.as_millis(),
                }
            } else {
                E2bError::http(call, &e)
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = bounded_body(response).await;
        Err(E2bError::Status {
            call,
            status,
            message: message_of(&body),
        })
    }
}

async fn record(
    call: &'static str,
    response: reqwest::Response,
) -> Result<SandboxRecord, E2bError> {
    let body = bounded_body(response).await;
    let record: SandboxRecord = serde_json::from_slice(&body).map_err(|e| E2bError::Protocol {
        call,
        what: format!("the sandbox record made no sense: {e}"),
    })?;
    checked_name(call, "sandbox id", &record.sandbox_id)?;
    Ok(record)
}

/// Refuses an envd older than [`MIN_ENVD`] (an unreadable version is given the benefit of
/// the doubt: the calls that need a newer one fail with their own errors).
pub(crate) fn check_envd(record: &SandboxRecord) -> Result<(), E2bError> {
    if version(&record.envd_version).is_some_and(|v| v < MIN_ENVD) {
        return Err(E2bError::Config(format!(
            "sandbox {} has envd {}, older than the 0.5.2 the bridge needs (it cannot close a process's stdin): rebuild the template",
            record.sandbox_id,
            bridge_protocol::shown(&record.envd_version)
        )));
    }
    Ok(())
}

/// `major.minor.patch` of a version string, if it is one.
fn version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim_start_matches('v').splitn(3, '.');
    let mut next = || {
        parts
            .next()?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((next()?, next()?, next()?))
}

/// Names that go into URL paths: E2B's ids are letters, digits, `-` and `_`.
fn checked_name(call: &'static str, what: &str, name: &str) -> Result<(), E2bError> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
    let fine = fine && !name.contains("..") && (what == "template" || !name.contains('/'));
    if fine {
        Ok(())
    } else {
        Err(E2bError::Config(format!(
            "{call}: {what} {:?} is not a valid E2B name",
            bridge_protocol::shown(name)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(version("0.5.2"), Some((0, 5, 2)));
        assert_eq!(version("v0.10.1-rc1"), Some((0, 10, 1)));
        assert!(version("0.4.9").is_some_and(|v| v < MIN_ENVD));
        assert!(version("0.10.0").is_some_and(|v| v >= MIN_ENVD));
        assert_eq!(version("dev"), None);
    }
}
