//! The gateway's side of the queue directory: publish requests, read answers, clean up.
//!
//! Every file is written to a temporary name and renamed into place, owner-only, so a
//! reader never sees half a file and no other user can read one. Anything in the sandbox
//! can write the queue too, so every file operation goes through a checked directory
//! handle ([`crate::queue_dir`]): no symlink is followed, no FIFO blocks, and an answer is
//! read only if it is a regular file within the limit.

use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;

use bridge_protocol::layout::{self, QueueLayout};

use crate::queue_dir::{self, QueueDir};

/// The queue directory as the gateway uses it.
#[derive(Debug, Clone)]
pub struct Queue {
    layout: QueueLayout,
}

impl Queue {
    /// Opens the queue, creating `requests/`, `responses/` and `logs/` (0700) if missing;
    /// refuses a `requests/` or `responses/` that is a symlink or not ours.
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
        QueueDir::open(&layout.requests_dir())?;
        QueueDir::open(&layout.responses_dir())?;
        Ok(Self { layout })
    }

    /// The queue's paths.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// Writes `bytes` to `path` atomically: `<path>.tmp` (0600), then rename. `path`'s
    /// directory is the operator's choice; its last component is never followed.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            ));
        };
        let Some(name) = name.to_str() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not UTF-8", path.display()),
            ));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        write_in(&QueueDir::open_configured(parent)?, name, bytes)
    }

    /// Publishes a request file.
    pub fn publish(&self, id: &str, bytes: &[u8]) -> io::Result<()> {
        write_in(&self.requests()?, &entry_name(id), bytes)
    }

    /// Removes a request file; "already gone" is fine.
    pub fn withdraw(&self, id: &str) {
        remove_if_present(self.requests(), &entry_name(id));
    }

    /// Removes a response file; "already gone" is fine.
    pub fn discard_response(&self, id: &str) {
        remove_if_present(self.responses(), &entry_name(id));
    }

    /// Reads and removes `responses/<id>.json`. `Ok(None)` when it is not there;
    /// an error when it is larger than `limit` or not a regular file (it is removed all
    /// the same).
    pub fn take_response(&self, id: &str, limit: usize) -> io::Result<Option<Vec<u8>>> {
        let dir = self.responses()?;
        let name = entry_name(id);
        let read = dir.read(&name, limit as u64);
        if matches!(read, Ok(Some(_))) || read.as_ref().is_err_and(is_refused) {
            remove_if_present(Ok(dir), &name);
        }
        read
    }

    /// Ids of the response files present now (regular files with a valid id).
    pub fn response_ids(&self) -> io::Result<Vec<String>> {
        let dir = self.responses()?;
        let mut out = Vec::new();
        for name in dir.names()? {
            let Some(id) = layout::entry_id(&name) else {
                continue;
            };
            if dir
                .stat(&name)
                .ok()
                .flatten()
                .is_some_and(|s| queue_dir::is_regular(&s))
            {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    fn requests(&self) -> io::Result<QueueDir> {
        QueueDir::open(&self.layout.requests_dir())
    }

    fn responses(&self) -> io::Result<QueueDir> {
        QueueDir::open(&self.layout.responses_dir())
    }
}

/// `<id>.json`.
fn entry_name(id: &str) -> String {
    format!("{id}{}", layout::ENTRY_SUFFIX)
}

/// Whether a read was refused for what the file is (not a passing i/o failure): such a
/// file is removed, so it cannot wedge the caller's wait.
fn is_refused(e: &io::Error) -> bool {
    matches!(
        queue_dir::queue_fs_error(e),
        Some(queue_dir::QueueFsError::NotRegular(_) | queue_dir::QueueFsError::TooLarge { .. })
    )
}

/// `<name>.tmp` in `dir`, then the rename to `name`.
fn write_in(dir: &QueueDir, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}{}", layout::TMP_SUFFIX);
    let result = dir
        .create(&tmp, bytes)
        .and_then(|()| dir.rename(&tmp, name));
    if result.is_err() {
        let _ = dir.remove(&tmp);
    }
    result
}

fn remove_if_present(dir: io::Result<QueueDir>, name: &str) {
    if let Err(e) = dir.and_then(|dir| dir.remove(name)) {
        tracing::warn!(file = %name, error = %e, "could not remove a queue file");
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
