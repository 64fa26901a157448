//! The queue through a directory this machine sees directly (development and tests):
//! the same claims, batching and delivery rules as the POSIX transport, in Rust.

use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bridge_protocol::layout::{self, QueueLayout};

use super::{Delivery, Incoming, Outgoing, TakeOptions, TakeProblem, Transport, TransportError};
use crate::runner::BoxFuture;

/// How often `take` looks for new requests while it waits.
const POLL_STEP: Duration = Duration::from_millis(5);
/// Marker beside a request whose answer was delivered; removed with the request.
const ANSWERED: &str = ".answered";

/// Shared-directory transport.
#[derive(Debug)]
pub struct SharedFsTransport {
    layout: QueueLayout,
    calls: AtomicU64,
}

impl SharedFsTransport {
    pub fn new(queue_dir: PathBuf) -> Self {
        Self {
            layout: QueueLayout::new(queue_dir),
            calls: AtomicU64::new(0),
        }
    }
}

impl Transport for SharedFsTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Incoming>, TransportError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + opts.wait;
            loop {
                let layout = self.layout.clone();
                let found = tokio::task::spawn_blocking(move || take_now(&layout, &opts))
                    .await
                    .map_err(|e| TransportError::Garbled(e.to_string()))??;
                if !found.is_empty() || Instant::now() >= deadline {
                    return Ok(found);
                }
                tokio::time::sleep(POLL_STEP).await;
            }
        })
    }

    fn deliver(
        &self,
        responses: Vec<Outgoing>,
    ) -> BoxFuture<'_, Result<Vec<(String, Delivery)>, TransportError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let layout = self.layout.clone();
            tokio::task::spawn_blocking(move || {
                responses
                    .iter()
                    .map(|r| Ok((r.id.clone(), deliver_one(&layout, r)?)))
                    .collect()
            })
            .await
            .map_err(|e| TransportError::Garbled(e.to_string()))?
        })
    }

    fn exec_count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// One pass over `requests/`: oldest first, claiming what it returns.
fn take_now(layout: &QueueLayout, opts: &TakeOptions) -> io::Result<Vec<Incoming>> {
    let dir = layout.requests_dir();
    remove_orphan_markers(&dir)?;
    let mut pending: Vec<(SystemTime, String, u64)> = Vec::new();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(layout::entry_id) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || marker(layout, id, ANSWERED).exists() {
            continue;
        }
        pending.push((
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            id.to_owned(),
            meta.len(),
        ));
    }
    pending.sort();
    let mut out = Vec::new();
    let mut total = 0usize;
    for (_, id, size) in pending {
        let claim = layout.claim_file(&id);
        let previously_claimed = claim.exists();
        if previously_claimed && !opts.include_claimed {
            continue;
        }
        if !out.is_empty() && total + size as usize > opts.max_batch_bytes {
            break;
        }
        write_private(&claim, b"")?;
        let file = if size > opts.envelope_limit as u64 {
            Err(TakeProblem::TooLarge { size })
        } else {
            total += size as usize;
            std::fs::read(layout.request_file(&id)).map_err(|_| TakeProblem::Unreadable)
        };
        out.push(Incoming {
            id,
            file,
            previously_claimed,
        });
    }
    Ok(out)
}

/// Writes one response while its caller waits; see the POSIX transport for the rules.
fn deliver_one(layout: &QueueLayout, response: &Outgoing) -> io::Result<Delivery> {
    if !layout::is_valid_id(&response.id) {
        return Err(io::Error::other(format!("invalid id {:?}", response.id)));
    }
    let lock = layout
        .responses_dir()
        .join(format!(".{}.lock", response.id));
    let _lock = DirLock::acquire(&lock);
    let request = layout.request_file(&response.id);
    if !request.exists() {
        return Ok(Delivery::CallerGone);
    }
    let path = layout.response_file(&response.id);
    let tmp = layout::tmp_path(&path);
    if let Err(e) = write_private(&tmp, &response.file).and_then(|()| std::fs::rename(&tmp, &path))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if request.exists() {
        write_private(&marker(layout, &response.id, ANSWERED), b"")?;
        let _ = std::fs::remove_file(layout.claim_file(&response.id));
        Ok(Delivery::Delivered)
    } else if path.exists() {
        // The caller gave up while we wrote: leave nothing behind.
        let _ = std::fs::remove_file(&path);
        Ok(Delivery::CallerGone)
    } else {
        Ok(Delivery::Delivered)
    }
}

/// Claim and answered markers whose request file is gone.
fn remove_orphan_markers(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name
            .strip_suffix(layout::CLAIM_SUFFIX)
            .or_else(|| name.strip_suffix(ANSWERED));
        if let Some(id) = stem {
            if !dir.join(format!("{id}{}", layout::ENTRY_SUFFIX)).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn marker(layout: &QueueLayout, id: &str, suffix: &str) -> PathBuf {
    layout.requests_dir().join(format!("{id}{suffix}"))
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

/// `mkdir` as a lock (what the POSIX transport uses too), waiting at most a second.
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
