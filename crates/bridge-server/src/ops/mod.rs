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
//!
//! The sandbox can put anything at any name in the queue (see `queue_dir.rs`): every
//! file here is opened relative to a checked directory handle, without following symlinks
//! and without blocking, only regular files of bounded size are read, and a per-response
//! lock that stays taken fails that one answer within a short bound.

pub mod oneshot;
pub mod session;
mod wait;

use std::io;
use std::time::{Duration, Instant, SystemTime};

use bridge_protocol::layout::{self, QueueLayout};
use bridge_protocol::ops::MAX_REPLY_ITEMS;
use bridge_protocol::ops::{Delivery, PutItem, PutResult, TakeOptions, TakeProblem, Taken};

use crate::queue_dir::{self, QueueDir};
pub use crate::queue_dir::{queue_fs_error, QueueFsError};
pub use wait::{take_waiting, RequestWatch};

/// A writer holds a response lock for one file write and rename, far less than this; a
/// lock directory older than this was left by a writer that died, and is broken.
const STALE_LOCK: Duration = Duration::from_secs(10);
/// How long one put waits for a busy response lock before failing that answer.
const LOCK_WAIT: Duration = Duration::from_millis(150);
/// How long all the puts of one batch wait for busy locks together, so forged locks cost
/// a batch at most this, however many answers it holds.
const BATCH_LOCK_WAIT: Duration = Duration::from_millis(300);
/// Pause between attempts at a busy lock.
const LOCK_RETRY: Duration = Duration::from_millis(5);

/// One pass over `requests/`.
pub fn take_now(layout: &QueueLayout, opts: &TakeOptions) -> io::Result<Vec<Taken>> {
    let dir = QueueDir::open(&layout.requests_dir())?;
    let names = dir.names()?;
    remove_orphan_claims(&dir, &names);
    let mut pending = pending(&dir, &names);
    pending.sort();
    let limit = opts.envelope_limit as u64;
    let mut out = Vec::new();
    let mut total = 0usize;
    for (_, id, size) in pending {
        // The host refuses a reply with more; the rest waits for the next take.
        if out.len() == MAX_REPLY_ITEMS {
            break;
        }
        let claim = claim_name(&id);
        let previously_claimed = dir.exists(&claim);
        if previously_claimed && !opts.include_claimed {
            continue;
        }
        if !out.is_empty() && total.saturating_add(size as usize) > opts.max_batch_bytes {
            break;
        }
        // Something already at the claim's name (ours, or planted) is left untouched.
        dir.create_marker(&claim)?;
        let file = if size > limit {
            Err(TakeProblem::TooLarge { size })
        } else {
            total += size as usize;
            read_request(&dir, &id, limit)
        };
        out.push(Taken {
            id,
            file,
            previously_claimed,
        });
    }
    Ok(out)
}

/// A request file's bytes, or why not (never its content in an error).
fn read_request(dir: &QueueDir, id: &str, limit: u64) -> Result<Vec<u8>, TakeProblem> {
    match dir.read(&entry_name(id), limit) {
        Ok(Some(bytes)) => Ok(bytes),
        Err(e) => match queue_fs_error(&e) {
            Some(&QueueFsError::TooLarge { size, .. }) => Err(TakeProblem::TooLarge { size }),
            _ => Err(TakeProblem::Unreadable),
        },
        Ok(None) => Err(TakeProblem::Unreadable),
    }
}

/// Whether a take would find something now (claimed ones count only when recovering).
pub fn anything_pending(layout: &QueueLayout, include_claimed: bool) -> io::Result<bool> {
    let dir = QueueDir::open(&layout.requests_dir())?;
    let names = dir.names()?;
    Ok(pending(&dir, &names)
        .iter()
        .any(|(_, id, _)| include_claimed || !dir.exists(&claim_name(id))))
}

/// `(mtime, id, size)` of the request files: regular files only (no symlinks).
fn pending(dir: &QueueDir, names: &[String]) -> Vec<(SystemTime, String, u64)> {
    let mut found = Vec::new();
    for name in names {
        let Some(id) = layout::entry_id(name) else {
            continue;
        };
        if let Ok(Some(stat)) = dir.stat(name) {
            if queue_dir::is_regular(&stat) {
                let size = queue_dir::size(&stat);
                found.push((queue_dir::modified(&stat), id.to_owned(), size));
            }
        }
    }
    found
}

/// Claims whose request file is gone (a planted directory of that name stays).
fn remove_orphan_claims(dir: &QueueDir, names: &[String]) {
    for name in names {
        if let Some(id) = name.strip_suffix(layout::CLAIM_SUFFIX) {
            if layout::is_valid_id(id) && !dir.exists(&entry_name(id)) {
                let _ = dir.remove(name);
            }
        }
    }
}

/// Writes one response while its caller waits.
pub fn put(layout: &QueueLayout, id: &str, file: &[u8]) -> io::Result<Delivery> {
    Putter::open(layout)?.put(id, file)
}

/// Puts every item, in order: one result each (a failure is that item's, not the batch's).
pub fn put_all(layout: &QueueLayout, items: Vec<PutItem>) -> Vec<PutResult> {
    let putter = Putter::open(layout).map_err(|e| e.to_string());
    items
        .into_iter()
        .map(|item| PutResult {
            result: match &putter {
                Ok(putter) => putter.put(&item.id, &item.file).map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            },
            id: item.id,
        })
        .collect()
}

/// Puts responses into one queue: both directories opened and checked once, and one
/// budget for waiting on busy locks (`BATCH_LOCK_WAIT`).
#[derive(Debug)]
pub struct Putter {
    requests: QueueDir,
    responses: QueueDir,
    lock_waited: std::cell::Cell<Duration>,
}

impl Putter {
    /// Opens `requests/` and `responses/` (real directories, ours).
    pub fn open(layout: &QueueLayout) -> io::Result<Self> {
        Ok(Self {
            requests: QueueDir::open(&layout.requests_dir())?,
            responses: QueueDir::open(&layout.responses_dir())?,
            lock_waited: std::cell::Cell::new(Duration::ZERO),
        })
    }

    /// Writes one response while its caller waits.
    pub fn put(&self, id: &str, file: &[u8]) -> io::Result<Delivery> {
        if !layout::is_valid_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid request id {id:?}"),
            ));
        }
        let _lock = self.lock(id)?;
        let (request, claim) = (entry_name(id), claim_name(id));
        if !self.requests.exists(&request) {
            // Its claim is an orphan now: remove it here rather than at the next take.
            let _ = self.requests.remove(&claim);
            return Ok(Delivery::CallerGone);
        }
        self.write(id, file)?;
        if self.requests.exists(&request) {
            let _ = self.requests.remove(&request);
            let _ = self.requests.remove(&claim);
            Ok(Delivery::Delivered)
        } else if self.responses.exists(&request) {
            // The caller gave up while we wrote: leave nothing behind.
            let _ = self.responses.remove(&request);
            let _ = self.requests.remove(&claim);
            Ok(Delivery::CallerGone)
        } else {
            // The gateway already read the answer and withdrew the request.
            Ok(Delivery::Delivered)
        }
    }

    /// `responses/<id>.json.tmp`, then the rename into place.
    fn write(&self, id: &str, file: &[u8]) -> io::Result<()> {
        let name = entry_name(id);
        let tmp = format!("{name}{}", layout::TMP_SUFFIX);
        let written = self
            .responses
            .create(&tmp, file)
            .and_then(|()| self.responses.rename(&tmp, &name));
        if written.is_err() {
            let _ = self.responses.remove(&tmp);
        }
        written
    }

    /// The response's lock, waiting no longer than this batch's budget allows.
    fn lock(&self, id: &str) -> io::Result<DirLock<'_>> {
        let waited = self.lock_waited.get();
        let allowed = LOCK_WAIT.min(BATCH_LOCK_WAIT.saturating_sub(waited));
        let started = Instant::now();
        let lock = DirLock::acquire(&self.responses, format!(".{id}.lock"), started + allowed);
        self.lock_waited.set(waited + started.elapsed());
        lock
    }
}

/// `<id>.json`: the entry's name in `requests/` and `responses/`.
fn entry_name(id: &str) -> String {
    format!("{id}{}", layout::ENTRY_SUFFIX)
}

/// `<id>.claimed`: the claim's name in `requests/`.
fn claim_name(id: &str) -> String {
    format!("{id}{}", layout::CLAIM_SUFFIX)
}

/// `mkdir` as a lock (the POSIX transport's too): `responses/.<id>.lock`.
struct DirLock<'a> {
    dir: &'a QueueDir,
    name: String,
}

impl<'a> DirLock<'a> {
    /// Takes the lock, breaking a stale one; fails once `deadline` has passed.
    fn acquire(dir: &'a QueueDir, name: String, deadline: Instant) -> io::Result<Self> {
        loop {
            match dir.mkdir(&name) {
                Ok(()) => return Ok(Self { dir, name }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            // Checked after breaking, so a writer that keeps planting locks cannot keep
            // this loop going past its deadline.
            let broke = break_if_stale(dir, &name);
            if Instant::now() >= deadline {
                return Err(QueueFsError::Locked(name).into());
            }
            if !broke {
                std::thread::sleep(LOCK_RETRY);
            }
        }
    }
}

/// Removes a lock left by a dead writer (older than [`STALE_LOCK`]) or anything at its
/// name that is no lock directory. `rmdir` removes only an empty directory, so nothing a
/// live writer (or anyone) keeps inside one is deleted. Whether it removed something.
fn break_if_stale(dir: &QueueDir, name: &str) -> bool {
    let Ok(Some(stat)) = dir.stat(name) else {
        return false;
    };
    if !queue_dir::is_dir(&stat) {
        return dir.remove(name).is_ok();
    }
    let age = SystemTime::now().duration_since(queue_dir::modified(&stat));
    // A time in the future is not proof of death: such a lock just waits out the bound.
    if age.is_ok_and(|age| age > STALE_LOCK) && dir.rmdir(name).is_ok() {
        tracing::warn!(lock = %name, "broke a stale response lock");
        return true;
    }
    false
}

impl Drop for DirLock<'_> {
    fn drop(&mut self) {
        let _ = self.dir.rmdir(&self.name);
    }
}
