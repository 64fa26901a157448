//! The queue operations of the host↔sandbox contract ([`bridge_protocol::ops`]), run where
//! the queue is: by the gateway binary's `take`, `put` and `session` subcommands inside a
//! sandbox, and by the host's shared-directory transport. One implementation of the rules:
//!
//! - `take` returns pending requests oldest first, claiming each (`<id>.claimed`) before it
//!   is returned, skipping claimed ones (unless recovering), bounded in bytes; claims whose
//!   request is gone are removed.
//! - `put` writes a response only while its request file exists (the caller waits): tmp +
//!   rename under a per-response lock, removed again if the request vanished meanwhile.
//!   Then it removes the request and its claim, as Paperclip's own host does, so an answered
//!   request is never taken again.

pub mod oneshot;
pub mod session;
mod wait;

use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bridge_protocol::layout::{self, QueueLayout};
use bridge_protocol::ops::MAX_REPLY_ITEMS;
use bridge_protocol::ops::{Delivery, PutItem, PutResult, TakeOptions, TakeProblem, Taken};

pub use wait::{take_waiting, RequestWatch};

/// One pass over `requests/`.
pub fn take_now(layout: &QueueLayout, opts: &TakeOptions) -> io::Result<Vec<Taken>> {
    let dir = layout.requests_dir();
    remove_orphan_markers(&dir)?;
    let mut pending = pending(layout)?;
    pending.sort();
    let mut out = Vec::new();
    let mut total = 0usize;
    for (_, id, size) in pending {
        // The host refuses a reply with more; the rest waits for the next take.
        if out.len() == MAX_REPLY_ITEMS {
            break;
        }
        let claim = layout.claim_file(&id);
        let previously_claimed = claim.exists();
        if previously_claimed && !opts.include_claimed {
            continue;
        }
        if !out.is_empty() && total.saturating_add(size as usize) > opts.max_batch_bytes {
            break;
        }
        write_private(&claim, b"")?;
        let file = if size > opts.envelope_limit as u64 {
            Err(TakeProblem::TooLarge { size })
        } else {
            total += size as usize;
            std::fs::read(layout.request_file(&id)).map_err(|_| TakeProblem::Unreadable)
        };
        out.push(Taken {
            id,
            file,
            previously_claimed,
        });
    }
    Ok(out)
}

/// Whether a take would find something now (claimed ones count only when recovering).
pub fn anything_pending(layout: &QueueLayout, include_claimed: bool) -> io::Result<bool> {
    Ok(pending(layout)?
        .iter()
        .any(|(_, id, _)| include_claimed || !layout.claim_file(id).exists()))
}

/// `(mtime, id, size)` of the request files.
fn pending(layout: &QueueLayout) -> io::Result<Vec<(SystemTime, String, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(layout.requests_dir())?.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(layout::entry_id) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((modified, id.to_owned(), meta.len()));
        }
    }
    Ok(found)
}

/// Writes one response while its caller waits.
pub fn put(layout: &QueueLayout, id: &str, file: &[u8]) -> io::Result<Delivery> {
    if !layout::is_valid_id(id) {
        return Err(io::Error::other(format!("invalid request id {id:?}")));
    }
    let _lock = DirLock::acquire(&layout.responses_dir().join(format!(".{id}.lock")));
    let request = layout.request_file(id);
    if !request.exists() {
        // Its claim is an orphan now: remove it here rather than at the next take.
        let _ = std::fs::remove_file(layout.claim_file(id));
        return Ok(Delivery::CallerGone);
    }
    let path = layout.response_file(id);
    let tmp = layout::tmp_path(&path);
    if let Err(e) = write_private(&tmp, file).and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if request.exists() {
        let _ = std::fs::remove_file(&request);
        let _ = std::fs::remove_file(layout.claim_file(id));
        Ok(Delivery::Delivered)
    } else if path.exists() {
        // The caller gave up while we wrote: leave nothing behind.
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(layout.claim_file(id));
        Ok(Delivery::CallerGone)
    } else {
        // The gateway already read the answer and withdrew the request.
        Ok(Delivery::Delivered)
    }
}

/// Puts every item, in order: one result each (a failure is that item's, not the batch's).
pub fn put_all(layout: &QueueLayout, items: Vec<PutItem>) -> Vec<PutResult> {
    items
        .into_iter()
        .map(|item| PutResult {
            result: put(layout, &item.id, &item.file).map_err(|e| e.to_string()),
            id: item.id,
        })
        .collect()
}

/// Claims whose request file is gone.
fn remove_orphan_markers(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(layout::CLAIM_SUFFIX) {
            if !dir.join(format!("{id}{}", layout::ENTRY_SUFFIX)).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// `mkdir` as a lock (the POSIX transport's too), waiting at most a second.
struct DirLock(Option<PathBuf>);

impl DirLock {
    fn acquire(path: &Path) -> Self {
        for _ in 0..100 {
            if std::fs::create_dir(path).is_ok() {
                return Self(Some(path.to_path_buf()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self(None)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_dir(path);
        }
    }
}
