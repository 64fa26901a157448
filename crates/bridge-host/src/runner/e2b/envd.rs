//! A client for envd, the agent in every E2B sandbox: the `process.Process` RPCs over the
//! Connect protocol with the JSON codec, and the files API.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Serialize;

use super::config::{E2bConfig, ENVD_PORT};
use super::connect::{self, ConnectError, Decoder, Frame};
use super::error::E2bError;
use super::wire::{ProcessEvent, StartRequest, StartResponse};

/// How often envd is asked to send a keepalive event on an idle process stream.
pub(crate) const KEEPALIVE_SECS: u64 = 30;
/// A process stream silent for this long (no output, no keepalive) is broken. Long enough
/// for an older envd that ignores our interval and keeps its default of 90 s.
const STREAM_IDLE: Duration = Duration::from_secs(2 * 90 + 10);
/// Largest error body read from envd.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Bound for opening a TCP (and TLS) connection to envd.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for one upload through the files API (a gateway binary is a few MiB).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// One sandbox's envd.
#[derive(Debug, Clone)]
pub(crate) struct Envd {
    http: reqwest::Client,
    base: String,
    headers: HeaderMap,
    user: Option<String>,
    request_timeout: Duration,
}

impl Envd {
    /// envd of sandbox `id` at `base`, with the sandbox's access token if it has one.
    pub(crate) fn new(
        config: &E2bConfig,
        base: String,
        id: &str,
        token: Option<&str>,
    ) -> Result<Self, E2bError> {
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: &str| -> Result<(), E2bError> {
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| E2bError::Config(format!("{name} is not a valid header value")))?;
            // Credentials print as "Sensitive" and stay out of HTTP/2's header table.
            value.set_sensitive(matches!(name, "x-access-token" | "authorization"));
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        put("e2b-sandbox-id", id)?;
        put("e2b-sandbox-port", &ENVD_PORT.to_string())?;
        if let Some(token) = token {
            put("x-access-token", token)?;
        }
        if let Some(user) = &config.user {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
            put("authorization", &format!("Basic {basic}"))?;
        }
        // No redirects: an answer from the sandbox's side must not send our token elsewhere.
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| E2bError::Config(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            headers,
            user: config.user.clone(),
            request_timeout: config.request_timeout,
        })
    }

    fn rpc(&self, method: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/process.Process/{method}", self.base))
            .headers(self.headers.clone())
            .header("connect-protocol-version", "1")
    }

    /// A unary RPC whose answer we do not need (`SendInput`, `CloseStdin`, `SendSignal`).
    pub(crate) async fn unary(
        &self,
        call: &'static str,
        method: &str,
        body: &impl Serialize,
    ) -> Result<(), E2bError> {
        let json = serde_json::to_vec(body).map_err(|e| E2bError::Config(e.to_string()))?;
        let sent = self
            .rpc(method)
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.request_timeout)
            .body(json)
            .send()
            .await;
        let response = sent.map_err(|e| timed_or_http(call, &e, self.request_timeout))?;
        if !response.status().is_success() {
            return Err(error_answer(call, response).await);
        }
        Ok(())
    }

    /// `Start`: runs a process and returns its event stream, after its `start` event.
    /// `deadline` becomes `Connect-Timeout-Ms`, which envd makes the process's lifetime.
    pub(crate) async fn start(
        &self,
        request: &StartRequest<'_>,
        deadline: Option<Duration>,
    ) -> Result<(u32, Events), E2bError> {
        const CALL: &str = "envd Start";
        let json = serde_json::to_vec(request).map_err(|e| E2bError::Config(e.to_string()))?;
        let mut builder = self
            .rpc("Start")
            .header(CONTENT_TYPE, "application/connect+json")
            .header("connect-content-encoding", "identity")
            .header("connect-accept-encoding", "identity")
            .header("keepalive-ping-interval", KEEPALIVE_SECS.to_string())
            // What older envd builds read instead.
            .header("x-keepalive-interval", KEEPALIVE_SECS.to_string())
            .body(connect::encode(0, &json));
        if let Some(deadline) = deadline {
            builder = builder.header(
                "connect-timeout-ms",
                deadline.as_millis().max(1).to_string(),
            );
        }
        // Sending and the first event share one bound: a trickling answer cannot hold it.
        let opened = tokio::time::timeout(self.request_timeout, async {
            let response = builder.send().await.map_err(|e| E2bError::http(CALL, &e))?;
            if !response.status().is_success() {
                return Err(error_answer(CALL, response).await);
            }
            let mut events = Events {
                response,
                decoder: Decoder::default(),
            };
            let first = events.next().await?;
            match first.and_then(|e| e.start) {
                Some(start) => Ok((start.pid, events)),
                None => Err(E2bError::Protocol {
                    call: CALL,
                    what: "the stream did not open with a start event".into(),
                }),
            }
        })
        .await;
        opened.unwrap_or_else(|_| Err(timed_out(CALL, self.request_timeout)))
    }

    /// Writes `bytes` to `path` through the files API (multipart, which every envd takes).
    pub(crate) async fn upload(&self, path: &str, bytes: Vec<u8>) -> Result<(), E2bError> {
        const CALL: &str = "envd POST /files";
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("upload")
            .mime_str("application/octet-stream")
            .map_err(|e| E2bError::Config(e.to_string()))?;
        let mut query = vec![("path", path.to_owned())];
        if let Some(user) = &self.user {
            query.push(("username", user.clone()));
        }
        let sent = self
            .http
            .post(format!("{}/files", self.base))
            .headers(self.headers.clone())
            .query(&query)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .timeout(UPLOAD_TIMEOUT)
            .send()
            .await;
        let response = sent.map_err(|e| timed_or_http(CALL, &e, UPLOAD_TIMEOUT))?;
        if !response.status().is_success() {
            return Err(error_answer(CALL, response).await);
        }
        let body = bounded_body(response).await;
        let entries: Vec<serde::de::IgnoredAny> =
            serde_json::from_slice(&body).map_err(|_| E2bError::Protocol {
                call: CALL,
                what: format!(
                    "an answer that is not a list of entries: {}",
                    shown_bytes(&body)
                ),
            })?;
        // The sandbox's word on where it wrote is not trusted: the install step checks
        // the file's sha256 before using it.
        tracing::debug!(entries = entries.len(), "uploaded through envd's files API");
        Ok(())
    }
}

/// A process's event stream (`Start`'s answer), one event at a time.
#[derive(Debug)]
pub(crate) struct Events {
    response: reqwest::Response,
    decoder: Decoder,
}

impl Events {
    /// The next event; `None` when the stream ended cleanly.
    pub(crate) async fn next(&mut self) -> Result<Option<ProcessEvent>, E2bError> {
        const CALL: &str = "envd Start stream";
        loop {
            match self
                .decoder
                .next_frame()
                .map_err(|e| E2bError::framing(CALL, e))?
            {
                Some(Frame::Message(payload)) => {
                    let parsed: StartResponse =
                        serde_json::from_slice(&payload).map_err(|_| E2bError::Protocol {
                            call: CALL,
                            what: format!("an event that is not JSON: {}", shown_bytes(&payload)),
                        })?;
                    return Ok(Some(parsed.event));
                }
                Some(Frame::End(Ok(()))) => return Ok(None),
                Some(Frame::End(Err(error))) => {
                    return Err(E2bError::Connect {
                        call: CALL,
                        error: shown_connect(error),
                    })
                }
                None => {}
            }
            let chunk = tokio::time::timeout(STREAM_IDLE, self.response.chunk()).await;
            match chunk {
                Err(_) => return Err(timed_out(CALL, STREAM_IDLE)),
                Ok(Err(e)) => return Err(E2bError::http(CALL, &e)),
                Ok(Ok(Some(bytes))) => self.decoder.push(&bytes),
                Ok(Ok(None)) => {
                    return Err(E2bError::Protocol {
                        call: CALL,
                        what: format!(
                        "the stream was cut before its end message ({} bytes of a message pending)",
                        self.decoder.pending()
                    ),
                    })
                }
            }
        }
    }
}

fn timed_out(call: &'static str, bound: Duration) -> E2bError {
    E2bError::TimedOut {
        call,
        ms: bound.as_millis(),
    }
}

fn timed_or_http(call: &'static str, e: &reqwest::Error, bound: Duration) -> E2bError {
    if e.is_timeout() {
        timed_out(call, bound)
    } else {
        E2bError::http(call, e)
    }
}

/// A non-2xx answer: a Connect error if its body is one, else the status and body.
pub(crate) async fn error_answer(call: &'static str, response: reqwest::Response) -> E2bError {
    let status = response.status().as_u16();
    let body = bounded_body(response).await;
    match serde_json::from_slice::<ConnectError>(&body) {
        Ok(error) if !error.code.is_empty() => E2bError::Connect {
            call,
            error: shown_connect(error),
        },
        _ => E2bError::Status {
            call,
            status,
            message: message_of(&body),
        },
    }
}

/// The `message` of a JSON error body, else the body, bounded and escaped.
pub(crate) fn message_of(body: &[u8]) -> String {
    match serde_json::from_slice::<super::wire::ApiError>(body) {
        Ok(e) if !e.message.is_empty() => bridge_protocol::shown(&e.message).to_string(),
        _ => shown_bytes(body),
    }
}

fn shown_connect(error: ConnectError) -> ConnectError {
    ConnectError {
        code: bridge_protocol::shown(&error.code).to_string(),
        message: bridge_protocol::shown(&error.message).to_string(),
    }
}

fn shown_bytes(bytes: &[u8]) -> String {
    bridge_protocol::shown(&String::from_utf8_lossy(bytes)).to_string()
}

/// At most [`ERROR_BODY_LIMIT`] bytes of a body, within the request bound.
pub(crate) async fn bounded_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= ERROR_BODY_LIMIT {
                body.truncate(ERROR_BODY_LIMIT);
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    body
}
