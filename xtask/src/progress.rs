//! Progress for long work: counted steps ("[2/6] installing ...") and the heartbeat line a
//! long command prints while it runs, so a minutes-long set-up is never silence.

use std::path::Path;
use std::time::Duration;

/// Numbered steps out of a known total, each announced on its own line.
#[derive(Debug)]
pub struct Steps {
    prefix: &'static str,
    done: usize,
    total: usize,
}

impl Steps {
    pub fn new(prefix: &'static str, total: usize) -> Self {
        Self {
            prefix,
            done: 0,
            total,
        }
    }

    /// Prints the next step's line.
    pub fn next(&mut self, what: &str) {
        println!("{}", self.line(what));
    }

    /// The next step's line; a step past the total stretches the total rather than
    /// printing "[7/6]".
    fn line(&mut self, what: &str) -> String {
        self.done += 1;
        self.total = self.total.max(self.done);
        format!("{}: [{}/{}] {what}", self.prefix, self.done, self.total)
    }
}

/// Files and bytes under a directory (symlinks counted, never followed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

/// What is under `dir` so far; unreadable entries (a package being unpacked) are skipped.
pub fn tally(dir: &Path) -> Tally {
    let mut total = Tally::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total.files += 1;
                total.bytes += meta.len();
            }
        }
    }
    total
}

/// One heartbeat: how long `what` has run and what it has produced so far.
pub fn heartbeat(what: &str, elapsed: Duration, so_far: Tally) -> String {
    format!(
        "  ... {what}: {} s, {} in {} files so far",
        elapsed.as_secs(),
        size(so_far.bytes),
        so_far.files
    )
}

/// Bytes for a person: the largest unit that keeps the number at least 1.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn steps_are_counted_and_never_past_the_total() {
        let mut steps = Steps::new("paperclip", 2);
        assert_eq!(steps.line("installing"), "paperclip: [1/2] installing");
        assert_eq!(steps.line("starting"), "paperclip: [2/2] starting");
        assert_eq!(steps.line("one more"), "paperclip: [3/3] one more");
    }

    #[test]
    fn heartbeat_says_time_size_and_count() {
        let so_far = Tally {
            files: 1834,
            bytes: 312 * 1024 * 1024 + 512 * 1024,
        };
        assert_eq!(
            heartbeat("npm install", Duration::from_millis(40_900), so_far),
            "  ... npm install: 40 s, 312.5 MiB in 1834 files so far"
        );
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn tally_counts_files_and_bytes_without_following_links() {
        let dir = std::env::temp_dir().join(format!("xtask-tally-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("top"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("a/b/deep"), [0u8; 5]).unwrap();
        // A link back up would loop forever if it were followed.
        std::os::unix::fs::symlink(&dir, dir.join("a/loop")).unwrap();
        let found = tally(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.files, 3);
        // A link's size is its target's length.
        let link = dir.as_os_str().len() as u64;
        assert_eq!(found.bytes, 15 + link);
        assert_eq!(tally(&dir.join("missing")), Tally::default());
    }
}
