//! envd's `process.Process` messages in proto3's JSON mapping (camelCase names, bytes as
//! base64, enums by name, default values omitted), and the control plane's sandbox
//! record. Only the fields the runner uses; unknown fields are ignored, as E2B's SDKs do.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `ProcessConfig`: what to run. The user is not here: it rides in a header.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessConfig<'a> {
    pub(crate) cmd: &'a str,
    pub(crate) args: Vec<&'a str>,
    pub(crate) envs: BTreeMap<&'a str, &'a str>,
}

/// `StartRequest`: `stdin: true` keeps the process's standard input open for input calls.
#[derive(Debug, Serialize)]
pub(crate) struct StartRequest<'a> {
    pub(crate) process: ProcessConfig<'a>,
    pub(crate) stdin: bool,
}

/// `ProcessSelector` by pid.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Selector {
    pub(crate) pid: u32,
}

/// `SendInputRequest` with stdin bytes.
#[derive(Debug, Serialize)]
pub(crate) struct SendInputRequest {
    pub(crate) process: Selector,
    pub(crate) input: StdinInput,
}

/// `ProcessInput` holding stdin.
#[derive(Debug, Serialize)]
pub(crate) struct StdinInput {
    pub(crate) stdin: String,
}

impl SendInputRequest {
    pub(crate) fn new(pid: u32, bytes: &[u8]) -> Self {
        Self {
            process: Selector { pid },
            input: StdinInput {
                stdin: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }
}

/// `CloseStdinRequest`.
#[derive(Debug, Serialize)]
pub(crate) struct CloseStdinRequest {
    pub(crate) process: Selector,
}

/// `SendSignalRequest`; `signal` is the enum's name (`SIGNAL_SIGKILL`, `SIGNAL_SIGTERM`).
#[derive(Debug, Serialize)]
pub(crate) struct SendSignalRequest {
    pub(crate) process: Selector,
    pub(crate) signal: &'static str,
}

/// `StartResponse`: one process event.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StartResponse {
    #[serde(default)]
    pub(crate) event: ProcessEvent,
}

/// `ProcessEvent`, a oneof: exactly one field is set (`keepalive` needs no field: an
/// event with none of these is skipped).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProcessEvent {
    pub(crate) start: Option<StartEvent>,
    pub(crate) data: Option<DataEvent>,
    pub(crate) end: Option<EndEvent>,
}

/// `StartEvent`: the process runs, with this pid.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StartEvent {
    #[serde(default)]
    pub(crate) pid: u32,
}

/// `DataEvent`, a oneof of base64 output (`pty` too, which we never ask for).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DataEvent {
    pub(crate) stdout: Option<String>,
    pub(crate) stderr: Option<String>,
}

/// `EndEvent`: how the process ended. `exited` is false when a signal ended it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndEvent {
    #[serde(default)]
    pub(crate) exit_code: i32,
    #[serde(default)]
    pub(crate) exited: bool,
    #[serde(default)]
    pub(crate) status: String,
}

impl EndEvent {
    /// The signal named by Go's `ProcessState.String()` ("signal: killed"), by its
    /// number on Linux; 0 for a name we do not know.
    pub(crate) fn signal(&self) -> Option<i32> {
        let name = self.status.strip_prefix("signal: ")?;
        let name = name.strip_suffix(" (core dumped)").unwrap_or(name);
        const NAMES: &[(&str, i32)] = &[
            ("hangup", 1),
            ("interrupt", 2),
            ("quit", 3),
            ("illegal instruction", 4),
            ("trace/breakpoint trap", 5),
            ("aborted", 6),
            ("bus error", 7),
            ("floating point exception", 8),
            ("killed", 9),
            ("user defined signal 1", 10),
            ("segmentation fault", 11),
            ("user defined signal 2", 12),
            ("broken pipe", 13),
            ("alarm clock", 14),
            ("terminated", 15),
        ];
        Some(
            NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, s)| *s),
        )
    }
}

/// The control plane's `Sandbox` record (create and connect answer with it).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxRecord {
    #[serde(rename = "sandboxID")]
    pub(crate) sandbox_id: String,
    #[serde(default)]
    pub(crate) envd_version: String,
    pub(crate) envd_access_token: Option<String>,
    pub(crate) domain: Option<String>,
}

/// The control plane's error body (`{code, message}`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ApiError {
    #[serde(default)]
    pub(crate) message: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_use_protos_json_names() {
        let input = serde_json::to_string(&SendInputRequest::new(7, b"hi")).unwrap();
        assert_eq!(input, r#"{"process":{"pid":7},"input":{"stdin":"aGk="}}"#);
        let signal = SendSignalRequest {
            process: Selector { pid: 7 },
            signal: "SIGNAL_SIGKILL",
        };
        assert_eq!(
            serde_json::to_string(&signal).unwrap(),
            r#"{"process":{"pid":7},"signal":"SIGNAL_SIGKILL"}"#
        );
    }

    #[test]
    fn an_end_with_defaults_omitted_is_exit_zero() {
        let r: StartResponse =
            serde_json::from_str(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#)
                .unwrap();
        let end = r.event.end.unwrap();
        assert_eq!((end.exit_code, end.exited, end.signal()), (0, true, None));
        let r: StartResponse =
            serde_json::from_str(r#"{"event":{"end":{"exitCode":-1,"status":"signal: killed"}}}"#)
                .unwrap();
        assert_eq!(r.event.end.unwrap().signal(), Some(9));
        let core = EndEvent {
            status: "signal: segmentation fault (core dumped)".into(),
            ..EndEvent::default()
        };
        assert_eq!(core.signal(), Some(11));
    }
}
