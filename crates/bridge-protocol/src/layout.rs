//! Where queue_v1 keeps its files under the queue directory, and which names count.
//!
//! Only computes paths; never touches the file system.

use std::path::{Path, PathBuf};

/// Sub-directory of pending requests.
pub const REQUESTS_DIR: &str = "requests";
/// Sub-directory of answers.
pub const RESPONSES_DIR: &str = "responses";
/// Sub-directory of gateway logs.
pub const LOGS_DIR: &str = "logs";
/// The gateway log, relative to the queue directory.
pub const LOG_FILE: &str = "logs/bridge.log";
/// Written by the gateway once it listens.
pub const READY_FILE: &str = "ready.json";
/// The gateway's pid, written by whoever started it.
pub const PID_FILE: &str = "server.pid";
/// Suffix of a queue entry. Anything else in `requests/` or `responses/` is not an entry.
pub const ENTRY_SUFFIX: &str = ".json";
/// Suffix of a file being written; renamed into place when complete.
pub const TMP_SUFFIX: &str = ".tmp";
/// Suffix of our host's claim marker beside a request (`requests/<id>.claimed`). It does not
/// end in `.json`, so queue_v1 peers ignore it.
pub const CLAIM_SUFFIX: &str = ".claimed";
/// Longest request id we accept.
pub const MAX_ID_LEN: usize = 128;

/// Paperclip's queue directory relative to the agent's working directory.
pub fn paperclip_queue_dir(remote_cwd: &Path, adapter_key: &str) -> PathBuf {
    remote_cwd
        .join(".paperclip-runtime")
        .join(adapter_key)
        .join("paperclip-bridge")
        .join("queue")
}

/// Whether `id` is a safe request id: 1 to 128 of `[A-Za-z0-9_-]`.
///
/// Ids become file names and shell words, so anything else is refused outright.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The id of a queue entry file name (`<id>.json`), if it is one with a valid id.
pub fn entry_id(file_name: &str) -> Option<&str> {
    let id = file_name.strip_suffix(ENTRY_SUFFIX)?;
    is_valid_id(id).then_some(id)
}

/// The paths of one queue directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLayout {
    root: PathBuf,
}

impl QueueLayout {
    /// A layout rooted at `root`, the queue directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The queue directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `requests/`: where the gateway publishes pending requests.
    pub fn requests_dir(&self) -> PathBuf {
        self.root.join(REQUESTS_DIR)
    }

    /// `responses/`: where the host writes answers.
    pub fn responses_dir(&self) -> PathBuf {
        self.root.join(RESPONSES_DIR)
    }

    /// `logs/`: the directory of the gateway log.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join(LOGS_DIR)
    }

    /// `logs/bridge.log`: the gateway's stdout and stderr, appended.
    pub fn log_file(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// `ready.json`: written by the gateway once it listens.
    pub fn ready_file(&self) -> PathBuf {
        self.root.join(READY_FILE)
    }

    /// `server.pid`: the gateway's pid, written by whoever started it.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join(PID_FILE)
    }

    /// `requests/<id>.json`: the pending request `id`.
    pub fn request_file(&self, id: &str) -> PathBuf {
        self.requests_dir().join(format!("{id}{ENTRY_SUFFIX}"))
    }

    /// `responses/<id>.json`: the answer to request `id`.
    pub fn response_file(&self, id: &str) -> PathBuf {
        self.responses_dir().join(format!("{id}{ENTRY_SUFFIX}"))
    }

    /// `requests/<id>.claimed`: our host's claim marker for request `id`.
    pub fn claim_file(&self, id: &str) -> PathBuf {
        self.requests_dir().join(format!("{id}{CLAIM_SUFFIX}"))
    }
}

/// The temporary name a writer uses before renaming `path` into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_queue_v1() {
        let q = QueueLayout::new("/w/q");
        assert_eq!(q.request_file("a1"), Path::new("/w/q/requests/a1.json"));
        assert_eq!(q.response_file("a1"), Path::new("/w/q/responses/a1.json"));
        assert_eq!(q.log_file(), Path::new("/w/q/logs/bridge.log"));
        assert_eq!(q.ready_file(), Path::new("/w/q/ready.json"));
        assert_eq!(q.pid_file(), Path::new("/w/q/server.pid"));
        assert_eq!(q.claim_file("a1"), Path::new("/w/q/requests/a1.claimed"));
        assert_eq!(
            paperclip_queue_dir(Path::new("/cwd"), "codex_local"),
            Path::new("/cwd/.paperclip-runtime/codex_local/paperclip-bridge/queue")
        );
    }

    #[test]
    fn temp_names_are_never_entries() {
        let tmp = tmp_path(Path::new("/q/requests/a1.json"));
        assert_eq!(tmp, Path::new("/q/requests/a1.json.tmp"));
        assert_eq!(entry_id("a1.json.tmp"), None);
        assert_eq!(entry_id("a1.claimed"), None);
        assert_eq!(entry_id("a1.json"), Some("a1"));
    }

    #[test]
    fn ids_are_restricted_to_safe_characters() {
        assert!(is_valid_id("3f2b8c1e-0d4a-4e6b-9c7d-1a2b3c4d5e6f"));
        for bad in ["", "..", "a/b", "a b", "a;rm", "ä", &"x".repeat(129)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        assert_eq!(entry_id("../x.json"), None);
        assert_eq!(entry_id(".json"), None);
    }
}
