//! The queue's directories as held handles, for code that must survive a hostile writer.
//!
//! Anything in the sandbox can write any file in the queue directory at any time: plant
//! symlinks, FIFOs, directories or huge files, or put a symlink in place of `requests/` or
//! `responses/`. So every operation here works relative to a directory handle that was
//! opened without following symlinks and checked (a real directory, owned by us), and
//! every file is opened `O_NOFOLLOW | O_NONBLOCK`: a symlink is never followed, a FIFO
//! never blocks, and only regular files of bounded size are read. New files are created
//! with `O_EXCL`, so an existing name (a symlink, a FIFO, a hard link to someone's file) is
//! never written through.
//!
//! Error messages name only our own file names (built from validated ids), never content.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

/// Flags for every file opened in a queue directory: never follow a symlink, never block
/// on a FIFO, never make a terminal ours, never leak into a child.
const FILE_FLAGS: OFlags = OFlags::NOFOLLOW
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Flags for a queue sub-directory: it must be a directory itself, not a symlink to one.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Mode of the files we create: owner-only, like the rest of the queue.
const FILE_MODE: u32 = 0o600;
/// Mode of the lock directories we create.
const DIR_MODE: u32 = 0o700;

/// Why a queue entry or directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueFsError {
    /// `requests/` or `responses/` is a symlink or not a directory.
    #[error(
        "{0} is not a real directory (a symlink or another file is in its place); refusing it"
    )]
    NotADirectory(PathBuf),
    /// A queue directory belongs to another user.
    #[error("{path} is owned by uid {owner}, not by this process's uid {uid}; refusing it")]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// The entry is a symlink, FIFO, directory, device or a file with other hard links.
    #[error("{0} is not a plain regular file; refusing it")]
    NotRegular(String),
    /// The file is larger than the limit; it was not read.
    #[error("{name} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The file name.
        name: String,
        /// Its size (at least `limit + 1` if it grew while being read).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A per-response lock stayed taken for longer than a put waits.
    #[error("{0} is held by another writer; this answer was not written")]
    Locked(String),
}

impl From<QueueFsError> for io::Error {
    fn from(e: QueueFsError) -> Self {
        let kind = match e {
            QueueFsError::NotADirectory(_) => io::ErrorKind::NotADirectory,
            QueueFsError::NotOwned { .. } => io::ErrorKind::PermissionDenied,
            QueueFsError::NotRegular(_) => io::ErrorKind::InvalidData,
            QueueFsError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            QueueFsError::Locked(_) => io::ErrorKind::WouldBlock,
        };
        io::Error::new(kind, e)
    }
}

/// The queue error inside an `io::Error`, if it carries one.
pub fn queue_fs_error(e: &io::Error) -> Option<&QueueFsError> {
    e.get_ref()?.downcast_ref()
}

/// One open, checked queue directory.
#[derive(Debug)]
pub(crate) struct QueueDir {
    fd: OwnedFd,
}

impl QueueDir {
    /// Opens `requests/` or `responses/`: a real directory (no symlink in its place), owned
    /// by our effective uid.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let fd = rfs::openat(CWD, path, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => QueueFsError::NotADirectory(path.to_owned()).into(),
            e => io::Error::from(e),
        })?;
        let stat = rfs::fstat(&fd)?;
        let uid = rustix::process::geteuid().as_raw();
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(QueueFsError::NotADirectory(path.to_owned()).into());
        }
        if stat.st_uid != uid {
            let (path, owner) = (path.to_owned(), stat.st_uid);
            return Err(QueueFsError::NotOwned { path, owner, uid }.into());
        }
        Ok(Self { fd })
    }

    /// Opens a directory the operator chose (the queue root, for `ready.json`): symlinks in
    /// its path are the operator's, so they are followed; files in it still are not.
    pub(crate) fn open_configured(path: &Path) -> io::Result<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rfs::openat(CWD, path, flags, Mode::empty())?;
        Ok(Self { fd })
    }

    /// The names in the directory (not `.` or `..`; names that are not UTF-8 are skipped:
    /// no queue entry has one).
    pub(crate) fn names(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in rfs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name != "." && name != ".." {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    /// `lstat` of `name`; `None` if there is nothing by that name.
    pub(crate) fn stat(&self, name: &str) -> io::Result<Option<Stat>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether anything (of any type) is at `name`. An error counts as "there": the
    /// callers then leave the entry alone.
    pub(crate) fn exists(&self, name: &str) -> bool {
        !matches!(self.stat(name), Ok(None))
    }

    /// Reads the regular file `name`, at most `limit` bytes: `None` if it is not there.
    /// Refuses anything else (symlink, FIFO, directory, device, a hard link to another
    /// name) and anything larger, by size before reading and by reading at most
    /// `limit + 1` bytes (a file that grows meanwhile).
    pub(crate) fn read(&self, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let fd = match rfs::openat(&self.fd, name, OFlags::RDONLY | FILE_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(QueueFsError::NotRegular(name.to_owned()).into()),
            Err(e) => return Err(e.into()),
        };
        let file = File::from(fd);
        let meta = file.metadata()?;
        // A second name would be a file someone linked in from elsewhere.
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(QueueFsError::NotRegular(name.to_owned()).into());
        }
        let too_large = |size| QueueFsError::TooLarge {
            name: name.to_owned(),
            size,
            limit,
        };
        if meta.len() > limit {
            return Err(too_large(meta.len()).into());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(too_large(bytes.len() as u64).into());
        }
        Ok(Some(bytes))
    }

    /// Creates `name` afresh (0600) holding `bytes`. Whatever was at that name (a stale
    /// temp file, a planted symlink or FIFO, an empty directory) is removed first, never
    /// written through.
    pub(crate) fn create(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let fd = match self.create_new(name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_any(name)?;
                self.create_new(name)?
            }
            other => other?,
        };
        File::from(fd).write_all(bytes)
    }

    /// Creates the empty file `name` if nothing is there: `false` if something already is
    /// (it is left untouched).
    pub(crate) fn create_marker(&self, name: &str) -> io::Result<bool> {
        match self.create_new(name) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_new(&self, name: &str) -> io::Result<OwnedFd> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | FILE_FLAGS;
        Ok(rfs::openat(
            &self.fd,
            name,
            flags,
            Mode::from_raw_mode(FILE_MODE),
        )?)
    }

    /// Renames `from` to `to`, both in this directory.
    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rfs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Removes the non-directory `name` (a symlink itself, not its target); "not there" is
    /// fine.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `name` whatever it is, as long as a directory is empty.
    pub(crate) fn remove_any(&self, name: &str) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => self.rmdir(name),
            Err(e) => Err(e.into()),
        }
    }

    /// `mkdir` (0700) of `name` in this directory.
    pub(crate) fn mkdir(&self, name: &str) -> io::Result<()> {
        Ok(rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(DIR_MODE))?)
    }

    /// Removes the directory `name` if it is empty; "not there" is fine.
    pub(crate) fn rmdir(&self, name: &str) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether `stat` is a regular file.
pub(crate) fn is_regular(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
}

/// Whether `stat` is a directory.
pub(crate) fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

/// The size in `stat`. `Stat`'s field types differ between architectures, so the casts
/// are identities on some.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn size(stat: &Stat) -> u64 {
    (stat.st_size as i64).max(0) as u64
}

/// The modification time in `stat` (the epoch for one before it).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn modified(stat: &Stat) -> SystemTime {
    let secs = (stat.st_mtime as i64).max(0) as u64;
    let nanos = (stat.st_mtime_nsec as u64).min(999_999_999) as u32;
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}
