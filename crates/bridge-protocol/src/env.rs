//! The environment contract: what the gateway reads and what the agent is given.
//!
//! Parsing takes a lookup function instead of reading the process environment, so it is
//! pure and testable; the binaries pass `std::env::var`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::codec::DEFAULT_MAX_BODY_BYTES;

/// Bridge mode: unset or [`QUEUE_V1`]; any other value is refused. The agent is given it too.
pub const MODE: &str = "PAPERCLIP_API_BRIDGE_MODE";
/// Required: the queue directory. The agent is given it too.
pub const QUEUE_DIR: &str = "PAPERCLIP_BRIDGE_QUEUE_DIR";
/// Required: the bearer token agents must present to the gateway.
pub const TOKEN: &str = "PAPERCLIP_BRIDGE_TOKEN";
/// IP address the gateway binds (default `127.0.0.1`, which `localhost` also means).
pub const HOST: &str = "PAPERCLIP_BRIDGE_HOST";
/// Port the gateway binds (default 0: any free port, reported in `ready.json`).
pub const PORT: &str = "PAPERCLIP_BRIDGE_PORT";
/// Response poll interval in milliseconds (default 100); the gateway may wake sooner.
pub const POLL_INTERVAL_MS: &str = "PAPERCLIP_BRIDGE_POLL_INTERVAL_MS";
/// How long a caller waits for its response, in milliseconds (default 30000).
pub const RESPONSE_TIMEOUT_MS: &str = "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS";
/// Pending requests allowed before the gateway refuses new ones with 503 (default 64).
pub const MAX_QUEUE_DEPTH: &str = "PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH";
/// Request and response body limit in bytes (default [`DEFAULT_MAX_BODY_BYTES`]).
pub const MAX_BODY_BYTES: &str = "PAPERCLIP_BRIDGE_MAX_BODY_BYTES";

/// Connections the gateway keeps open at once (default [`DEFAULT_MAX_CONNECTIONS`]); at the
/// cap an idle one is closed for a new one, else the new one is refused at once.
pub const MAX_CONNECTIONS: &str = "PAPERCLIP_BRIDGE_MAX_CONNECTIONS";
/// How long a connection may wait for, or take to send, a request head, in milliseconds
/// (default [`DEFAULT_HEADER_TIMEOUT_MS`]): it bounds a slow head and an idle keep-alive.
pub const HEADER_TIMEOUT_MS: &str = "PAPERCLIP_BRIDGE_HEADER_TIMEOUT_MS";

/// Default of [`MAX_CONNECTIONS`]: far more than an agent's concurrent calls, well within
/// a default file-descriptor limit once it is raised to the hard limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default of [`HEADER_TIMEOUT_MS`]: ample for a local client's head.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;

/// Agent-side: the gateway's base URL (no `/api` suffix).
pub const AGENT_API_URL: &str = "PAPERCLIP_API_URL";
/// Agent-side: the bridge token (never the real credential).
pub const AGENT_API_KEY: &str = "PAPERCLIP_API_KEY";

/// The only mode this gateway implements.
pub const QUEUE_V1: &str = "queue_v1";

/// Gateway settings, with queue_v1's defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Where requests are published and responses read ([`QUEUE_DIR`]).
    pub queue_dir: PathBuf,
    /// The bearer token agents must present; `Debug` never prints it ([`TOKEN`]).
    pub token: String,
    /// Address to bind ([`HOST`]).
    pub host: IpAddr,
    /// Port to bind; 0 lets the OS choose ([`PORT`]).
    pub port: u16,
    /// Interval between scans for responses when polling ([`POLL_INTERVAL_MS`]).
    pub poll_interval: Duration,
    /// How long a caller waits for its response before the gateway answers without one
    /// ([`RESPONSE_TIMEOUT_MS`]).
    pub response_timeout: Duration,
    /// This gateway's own requests waiting at once before new ones get 503
    /// ([`MAX_QUEUE_DEPTH`]); files others put in `requests/` do not count.
    pub max_queue_depth: usize,
    /// Largest request or response body in bytes ([`MAX_BODY_BYTES`]).
    pub max_body_bytes: usize,
    /// Connections open at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Bound for waiting for and reading a request head ([`HEADER_TIMEOUT_MS`]).
    pub header_timeout: Duration,
}

impl std::fmt::Debug for GatewayConfig {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("queue_dir", &self.queue_dir)
            .field("token", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("poll_interval", &self.poll_interval)
            .field("response_timeout", &self.response_timeout)
            .field("max_queue_depth", &self.max_queue_depth)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .finish()
    }
}

/// A variable that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// This required variable is unset or empty.
    #[error("{0} is required but not set")]
    Missing(&'static str),
    /// A variable is set but does not parse or is out of range.
    #[error("{name}={value:?} is not valid: {expected}")]
    Invalid {
        /// Which variable is wrong.
        name: &'static str,
        /// The value it was set to.
        value: String,
        /// What a valid value looks like, for the message.
        expected: &'static str,
    },
    /// [`MODE`] names a mode other than [`QUEUE_V1`] (the value given).
    #[error("{MODE}={0:?} is not implemented by this gateway (only \"queue_v1\" is)")]
    UnsupportedMode(String),
}

impl GatewayConfig {
    /// Reads the configuration through `lookup` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.is_empty());
        if let Some(mode) = get(MODE) {
            if mode != QUEUE_V1 {
                return Err(EnvError::UnsupportedMode(mode));
            }
        }
        let queue_dir = get(QUEUE_DIR).ok_or(EnvError::Missing(QUEUE_DIR))?;
        let token = get(TOKEN).ok_or(EnvError::Missing(TOKEN))?;
        let host = match get(HOST).as_deref() {
            None | Some("localhost") => IpAddr::from([127, 0, 0, 1]),
            Some(v) => v.parse().map_err(|_| invalid(HOST, v, "an IP address"))?,
        };
        Ok(Self {
            queue_dir: PathBuf::from(queue_dir),
            token,
            host,
            port: number(get(PORT), PORT, 0, 0, u16::MAX as u64)? as u16,
            poll_interval: millis(get(POLL_INTERVAL_MS), POLL_INTERVAL_MS, 100)?,
            response_timeout: millis(get(RESPONSE_TIMEOUT_MS), RESPONSE_TIMEOUT_MS, 30_000)?,
            max_queue_depth: number(get(MAX_QUEUE_DEPTH), MAX_QUEUE_DEPTH, 64, 1, 1 << 20)?
                as usize,
            max_body_bytes: number(
                get(MAX_BODY_BYTES),
                MAX_BODY_BYTES,
                DEFAULT_MAX_BODY_BYTES as u64,
                0,
                1 << 30,
            )? as usize,
            max_connections: number(
                get(MAX_CONNECTIONS),
                MAX_CONNECTIONS,
                DEFAULT_MAX_CONNECTIONS as u64,
                1,
                1 << 20,
            )? as usize,
            header_timeout: millis(
                get(HEADER_TIMEOUT_MS),
                HEADER_TIMEOUT_MS,
                DEFAULT_HEADER_TIMEOUT_MS,
            )?,
        })
    }
}

fn invalid(name: &'static str, value: &str, expected: &'static str) -> EnvError {
    EnvError::Invalid {
        name,
        value: value.to_owned(),
        expected,
    }
}

fn number(
    value: Option<String>,
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, EnvError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(name, &value, "a whole number in range")),
    }
}

fn millis(value: Option<String>, name: &'static str, default: u64) -> Result<Duration, EnvError> {
    // Between 1 ms and one day: zero would spin, more than a day is surely a typo.
    number(value, name, default, 1, 86_400_000).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<GatewayConfig, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GatewayConfig::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [(QUEUE_DIR, "/q"), (TOKEN, "t")];

    #[test]
    fn defaults_are_queue_v1s() {
        let c = parse(&BASE).unwrap();
        assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.port, 0);
        assert_eq!(c.poll_interval, Duration::from_millis(100));
        assert_eq!(c.response_timeout, Duration::from_secs(30));
        assert_eq!(c.max_queue_depth, 64);
        assert_eq!(c.max_body_bytes, 10_551_296);
        assert_eq!(c.max_connections, 512);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn required_values() {
        assert_eq!(parse(&[(TOKEN, "t")]), Err(EnvError::Missing(QUEUE_DIR)));
        assert_eq!(parse(&[(QUEUE_DIR, "/q")]), Err(EnvError::Missing(TOKEN)));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut vars = BASE.to_vec();
        vars.push((PORT, "70000"));
        let err = parse(&vars).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("PAPERCLIP_BRIDGE_PORT=\"70000\""),
            "{err}"
        );
        let mut vars = BASE.to_vec();
        vars.push((RESPONSE_TIMEOUT_MS, "0"));
        assert!(parse(&vars).is_err());
        let mut vars = BASE.to_vec();
        vars.push((HOST, "example.com"));
        assert!(parse(&vars).is_err());
    }

    #[test]
    fn other_modes_are_refused() {
        let mut vars = BASE.to_vec();
        vars.push((MODE, "http_v2"));
        assert_eq!(
            parse(&vars),
            Err(EnvError::UnsupportedMode("http_v2".into()))
        );
        vars.pop();
        vars.push((MODE, QUEUE_V1));
        assert!(parse(&vars).is_ok());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = parse(&[(QUEUE_DIR, "/q"), (TOKEN, "sekrit")]).unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
