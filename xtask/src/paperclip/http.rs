//! A tiny blocking HTTP/1.1 client for talking JSON to the local Paperclip server.
//!
//! Only 127.0.0.1 and plain HTTP are needed, so std's TcpStream is enough and the xtask
//! stays free of tokio/reqwest.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Bound on connecting, and on every read or write, so no request hangs forever.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A Paperclip API endpoint on the loopback.
pub struct Api {
    pub port: u16,
    /// `Authorization: Bearer` value, if requests act as an agent.
    pub bearer: Option<String>,
    /// `X-Paperclip-Run-Id` value, if requests belong to a heartbeat run.
    pub run_id: Option<String>,
}

/// Status code and body of one answer.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON, when the status is 2xx; otherwise an error quoting the answer.
    pub fn json_ok(&self, what: &str) -> Result<Value> {
        if !(200..300).contains(&self.status) {
            bail!("{what}: HTTP {} {}", self.status, snippet(&self.body));
        }
        serde_json::from_str(&self.body)
            .with_context(|| format!("{what}: answer is not JSON: {}", snippet(&self.body)))
    }
}

impl Api {
    /// Board access (local_trusted mode needs no credentials).
    pub fn board(port: u16) -> Self {
        Api {
            port,
            bearer: None,
            run_id: None,
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send("POST", path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send("PATCH", path, Some(body))
    }

    /// One request on a fresh connection (`Connection: close`).
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let payload = body.map(Value::to_string).unwrap_or_default();
        stream
            .write_all(
                self.head(method, path, body.is_some(), payload.len())
                    .as_bytes(),
            )
            .and_then(|()| stream.write_all(payload.as_bytes()))
            .with_context(|| format!("sending {method} {path}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        parse_reply(&raw).with_context(|| format!("answer to {method} {path}"))
    }

    fn head(&self, method: &str, path: &str, has_body: bool, len: usize) -> String {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Accept: application/json\r\n",
            self.port
        );
        if let Some(token) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(run) = &self.run_id {
            head.push_str(&format!("X-Paperclip-Run-Id: {run}\r\n"));
        }
        if has_body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {len}\r\n"
            ));
        }
        head.push_str("\r\n");
        head
    }
}

/// Splits a raw HTTP/1.1 answer into status and (de-chunked) body.
fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let split = find(raw, b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status code")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).context("bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The start of a body, for error messages (answers here never carry secrets we sent).
pub fn snippet(body: &str) -> String {
    body.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = parse_reply(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (201, "{}"));
        let chunked = parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, "{\"a\":1}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_reply(b"nonsense").is_err());
        assert!(
            parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
