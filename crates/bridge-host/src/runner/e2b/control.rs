//! E2B's control plane (REST): create or connect to a sandbox, renew its time to live,
//! kill it. Every call is bounded in time and names itself in its errors.

use std::time::Duration;

use serde::Serialize;

use super::config::E2bConfig;
use super::envd::{bounded_body, message_of};
use super::error::E2bError;
use super::wire::SandboxRecord;

/// Longest sandbox id or template name we send in a URL.
const MAX_NAME: usize = 128;

/// The control plane, with our API key.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    http: reqwest::Client,
    base: String,
    key: String,
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
        let http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| E2bError::Config(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: config.api_url.trim_end_matches('/').to_owned(),
            key: key.expose().to_owned(),
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
        let sent = request.header("x-api-key", &self.key).send().await;
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
