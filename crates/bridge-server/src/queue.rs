//! The gateway's side of the queue directory: publish requests, read answers, clean up.
//!
//! Every file is written to a temporary name and renamed into place, owner-only, so a
//! reader never sees half a file and no other user can read one.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use bridge_protocol::layout::{self, QueueLayout};

/// The queue directory as the gateway uses it.
#[derive(Debug, Clone)]
pub struct Queue {
    layout: QueueLayout,
}

impl Queue {
    /// Opens the queue, creating `requests/`, `responses/` and `logs/` (0700) if missing.
    pub fn create(root: &Path) -> io::Result<Self> {
        let layout = QueueLayout::new(root);
        for dir in [
            layout.root().to_path_buf(),
            layout.requests_dir(),
            layout.responses_dir(),
            layout.logs_dir(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        Ok(Self { layout })
    }

    /// The queue's paths.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// Writes `bytes` to `path` atomically: `<path>.tmp` (0600), then rename.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        let tmp = layout::tmp_path(path);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| file.write_all(bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Publishes a request file.
    pub fn publish(&self, id: &str, bytes: &[u8]) -> io::Result<()> {
        Self::write_atomic(&self.layout.request_file(id), bytes)
    }

    /// Removes a request file; "already gone" is fine.
    pub fn withdraw(&self, id: &str) {
        remove_if_present(&self.layout.request_file(id));
    }

    /// Removes a response file; "already gone" is fine.
    pub fn discard_response(&self, id: &str) {
        remove_if_present(&self.layout.response_file(id));
    }

    /// Reads and removes `responses/<id>.json`. `Ok(None)` when it is not there;
    /// an error when it is larger than `limit` (it is removed all the same).
    pub fn take_response(&self, id: &str, limit: usize) -> io::Result<Option<Vec<u8>>> {
        let path = self.layout.response_file(id);
        let size = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => {
                remove_if_present(&path);
                return Err(io::Error::other("response is not a regular file"));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if size > limit as u64 {
            remove_if_present(&path);
            return Err(io::Error::other(format!(
                "response file is {size} bytes, over the limit of {limit}"
            )));
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        remove_if_present(&path);
        Ok(Some(bytes))
    }

    /// Ids of the response files present now (regular files with a valid id).
    pub fn response_ids(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.layout.responses_dir())? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(layout::entry_id) else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }
}

fn remove_if_present(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a queue file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn files_and_directories_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::create(&dir.path().join("q")).unwrap();
        queue.publish("a1", b"{}\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&queue.layout().requests_dir()), 0o700);
        assert_eq!(mode(&queue.layout().request_file("a1")), 0o600);
        assert!(!layout::tmp_path(&queue.layout().request_file("a1")).exists());
    }

    #[test]
    fn oversized_responses_are_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::create(dir.path()).unwrap();
        let path = queue.layout().response_file("r1");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        assert!(queue.take_response("r1", 99).is_err());
        assert!(!path.exists());
        assert_eq!(queue.take_response("r1", 99).unwrap(), None);
    }
}
