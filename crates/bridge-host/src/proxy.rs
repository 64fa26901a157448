//! The upstream: forwards a checked request to the real API, adding the real credential
//! and the run id. The forward URL is the configured base + canonical path + query, so
//! nothing in a request can choose the host.

use std::fmt;
use std::time::Duration;

use bridge_protocol::wire::Headers;
use bridge_protocol::CanonicalPath;

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; from here on it prints as `<redacted>`.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A configuration the upstream cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The API URL is not a plain http(s) base URL.
    #[error("API URL {0:?} must be an http:// or https:// URL without query, fragment or user")]
    BadUrl(String),
    /// reqwest could not build its client (TLS set-up and the like).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The real API, as the host reaches it.
#[derive(Debug, Clone)]
pub struct Upstream {
    base: String,
    key: Secret,
    run_id: Option<String>,
    client: reqwest::Client,
}

/// A request that passed the policy.
#[derive(Debug)]
pub struct Forward<'a> {
    /// The HTTP method, upper-case, already allowed by the policy.
    pub method: &'a str,
    /// The canonical path: what was checked is what is forwarded.
    pub path: &'a CanonicalPath,
    /// The query string with its `?`, or empty.
    pub query: &'a str,
    /// Already reduced to the request header allowlist.
    pub headers: &'a Headers,
    /// The decoded request body.
    pub body: Vec<u8>,
}

/// What became of a forwarded request.
#[derive(Debug)]
pub enum Forwarded {
    /// The upstream answered (headers reduced to the response allowlist).
    Answer {
        /// The upstream's status, passed through (3xx is not followed).
        status: u16,
        /// Response headers, reduced to the response allowlist.
        headers: Headers,
        /// The response body, bounded by the policy's body limit.
        body: Vec<u8>,
    },
    /// Failed before the request left: safe to retry.
    NotSent(String),
    /// Failed after the request may have reached the upstream: outcome unknown.
    MaybeSent(String),
}

impl Upstream {
    /// The API at `base_url` with the real `key`, for run `run_id` (sent as Paperclip's
    /// run-id header when present).
    pub fn new(
        base_url: &str,
        key: Secret,
        run_id: Option<String>,
        timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let url =
            reqwest::Url::parse(base_url).map_err(|_| UpstreamError::BadUrl(base_url.into()))?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none();
        if !plain {
            return Err(UpstreamError::BadUrl(base_url.into()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Client(e.to_string()))?;
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_owned(),
            key,
            run_id,
            client,
        })
    }

    /// Another run's upstream on the same API: its own credential and run id, this one's
    /// HTTP client (connection pool, TLS set-up). One host process serving many sandboxes
    /// should derive them all from one `Upstream` this way.
    pub fn for_run(&self, key: Secret, run_id: Option<String>) -> Self {
        Self {
            base: self.base.clone(),
            key,
            run_id,
            client: self.client.clone(),
        }
    }

    /// The configured base URL (no credential in it).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends `request` upstream; the body is read up to `max_body_bytes`.
    pub async fn forward(
        &self,
        request: Forward<'_>,
        response_headers: &[String],
        max_body_bytes: usize,
    ) -> Forwarded {
        let url = format!("{}{}{}", self.base, request.path, request.query);
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return Forwarded::NotSent(format!("invalid method {}", request.method));
        };
        let mut builder = self.client.request(method, &url);
        for (name, value) in request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = builder.bearer_auth(self.key.expose());
        if let Some(run_id) = &self.run_id {
            builder = builder.header("x-paperclip-run-id", run_id.as_str());
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() || e.is_builder() => return Forwarded::NotSent(describe(&e)),
            Err(e) => return Forwarded::MaybeSent(describe(&e)),
        };
        let status = response.status().as_u16();
        let headers = keep_headers(response.headers(), response_headers);
        match read_capped(response, max_body_bytes).await {
            Ok(body) => Forwarded::Answer {
                status,
                headers,
                body,
            },
            Err(why) => Forwarded::MaybeSent(why),
        }
    }
}

/// The error without its URL (which is ours, but keeps logs short) and never a header.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut text = format!("upstream request {kind}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

fn keep_headers(headers: &reqwest::header::HeaderMap, allowed: &[String]) -> Headers {
    let mut out = Headers::new();
    for name in allowed {
        let values: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            out.insert(name.clone(), values.join(", "));
        }
    }
    out
}

async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(format!(
                        "upstream response body is over the limit of {limit} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(describe(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        let key = || Secret::new("k".into());
        let t = Duration::from_secs(1);
        assert!(Upstream::new("http://127.0.0.1:3100", key(), None, t).is_ok());
        assert_eq!(
            Upstream::new("http://127.0.0.1:3100/", key(), None, t)
                .unwrap()
                .base_url(),
            "http://127.0.0.1:3100"
        );
        for bad in [
            "ftp://x",
            "http://x/?a=1",
            "http://u:p@x",
            "not a url",
            "http://x/#f",
        ] {
            assert!(Upstream::new(bad, key(), None, t).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_runs_upstream_keeps_the_api_and_takes_its_own_credential() {
        let t = Duration::from_secs(1);
        let first = Upstream::new("http://x:1", Secret::new("a".into()), None, t).unwrap();
        let second = first.for_run(Secret::new("b".into()), Some("run-2".into()));
        assert_eq!(second.base_url(), "http://x:1");
        assert_eq!(second.key.expose(), "b");
        assert_eq!(second.run_id.as_deref(), Some("run-2"));
        assert_eq!(first.key.expose(), "a");
    }

    #[test]
    fn secrets_do_not_print() {
        let upstream = Upstream::new(
            "http://x",
            Secret::new("sekrit".into()),
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{upstream:?}").contains("sekrit"));
    }
}
