//! Why an E2B call failed: each error names the call and what came back (bounded and
//! escaped: envd's words come from the sandbox).

use super::connect::{ConnectError, FramingError};
use crate::runner::RunnerError;

/// An E2B call that failed.
#[derive(Debug, thiserror::Error)]
pub enum E2bError {
    /// The call never got an HTTP answer (connection refused, reset, TLS).
    #[error("{call}: {message}")]
    Http {
        /// The call (`envd Start`, `POST /v2/sandboxes`, ...).
        call: &'static str,
        /// What the HTTP client said.
        message: String,
    },
    /// An HTTP error status that is not a Connect error.
    #[error("{call}: HTTP {status}: {message}")]
    Status {
        /// The call.
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// The body's message, bounded and escaped.
        message: String,
    },
    /// A Connect error from envd.
    #[error("{call}: {error}")]
    Connect {
        /// The call.
        call: &'static str,
        /// Connect's code and message (message bounded and escaped).
        error: ConnectError,
    },
    /// An answer that breaks the protocol (cut stream, bad framing, bad JSON).
    #[error("{call}: {what}")]
    Protocol {
        /// The call.
        call: &'static str,
        /// What was wrong.
        what: String,
    },
    /// No answer within the call's bound.
    #[error("{call}: no answer in {ms} ms")]
    TimedOut {
        /// The call.
        call: &'static str,
        /// The bound.
        ms: u128,
    },
    /// The configuration cannot work (no API key, a bad URL).
    #[error("{0}")]
    Config(String),
}

impl E2bError {
    pub(crate) fn http(call: &'static str, e: &reqwest::Error) -> Self {
        Self::Http {
            call,
            message: bridge_protocol::shown_error(e).to_string(),
        }
    }

    pub(crate) fn framing(call: &'static str, e: FramingError) -> Self {
        Self::Protocol {
            call,
            what: e.to_string(),
        }
    }

    /// Another attempt may succeed: the network, a 5xx or 429, an unavailable envd.
    pub fn transient(&self) -> bool {
        match self {
            Self::Http { .. } | Self::Protocol { .. } | Self::TimedOut { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Connect { error, .. } => matches!(
                error.code.as_str(),
                "unavailable" | "deadline_exceeded" | "resource_exhausted" | "aborted"
            ),
            Self::Config(_) => false,
        }
    }

    /// The Connect error code, if envd sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Connect { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

impl From<E2bError> for RunnerError {
    fn from(e: E2bError) -> Self {
        RunnerError::Provider {
            transient: e.transient(),
            message: e.to_string(),
        }
    }
}
