//! The queue operations (`ops::take_now`, `ops::put_all`) and the gateway's queue against a
//! hostile sandbox, which can put anything at any name in the queue directory: symlinks
//! out of the queue, FIFOs, directories, hard links, huge files, forged locks, and
//! symlinks in place of `requests/` and `responses/` themselves.

// Test helpers are not #[test] functions, so clippy's in-test allowance does not reach
// them; a failed helper step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use bridge_protocol::layout::QueueLayout;
use bridge_protocol::ops::{Delivery, PutItem, PutResult, TakeOptions, TakeProblem, Taken};
use bridge_server::{ops, Queue};

/// What a file outside the queue holds; it must never change.
const PRECIOUS: &[u8] = b"outside the queue: never to be touched\n";
/// A bound for calls that must not block at all (generous for a loaded machine).
const PROMPT: Duration = Duration::from_secs(5);

/// A queue (made by the gateway's own `Queue::create`) beside an `outside` directory.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    layout: QueueLayout,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("queue");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let layout = Queue::create(&root).unwrap().layout().clone();
        Fixture {
            _dir: dir,
            root,
            outside,
            layout,
        }
    }

    fn queue(&self) -> Queue {
        Queue::create(&self.root).unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A file outside the queue holding [`PRECIOUS`].
    fn precious(&self, name: &str) -> PathBuf {
        let path = self.outside.join(name);
        std::fs::write(&path, PRECIOUS).unwrap();
        path
    }

    fn request(&self, id: &str) {
        std::fs::write(self.layout.request_file(id), b"{}\n").unwrap();
    }

    fn take(&self, include_claimed: bool) -> std::io::Result<Vec<Taken>> {
        ops::take_now(&self.layout, &take_opts(include_claimed))
    }

    fn put(&self, ids: &[&str]) -> Vec<PutResult> {
        let items = ids.iter().map(|id| item(id)).collect();
        ops::put_all(&self.layout, items)
    }

    fn listing(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn take_opts(include_claimed: bool) -> TakeOptions {
    TakeOptions {
        wait: Duration::ZERO,
        max_batch_bytes: 8 << 20,
        envelope_limit: 8 << 20,
        include_claimed,
    }
}

fn item(id: &str) -> PutItem {
    PutItem {
        id: id.into(),
        file: answer(id),
    }
}

fn answer(id: &str) -> Vec<u8> {
    format!("{{\"answer\":\"{id}\"}}\n").into_bytes()
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `f` on a thread and fails the test if it does not return within [`PROMPT`] (a
/// call blocked on a FIFO never would; its thread is left behind).
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .recv_timeout(PROMPT)
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

fn set_age(path: &Path, age: Duration) {
    let file = std::fs::File::open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn delivered(results: &[PutResult]) -> Vec<&str> {
    results
        .iter()
        .filter(|r| r.result == Ok(Delivery::Delivered))
        .map(|r| r.id.as_str())
        .collect()
}

#[test]
fn a_symlink_at_the_temp_name_is_never_written_through() {
    let fx = Fixture::new();
    let target = fx.precious("target");
    fx.request("r1");
    symlink(&target, &fx.path("responses/r1.json.tmp"));
    let results = fx.put(&["r1"]);
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS, "written through");
    assert_eq!(delivered(&results), ["r1"], "{results:?}");
    let response = fx.path("responses/r1.json");
    assert!(std::fs::symlink_metadata(&response).unwrap().is_file());
    assert_eq!(std::fs::read(response).unwrap(), answer("r1"));
    assert_eq!(fx.listing("responses"), ["r1.json"]);
}

#[test]
fn a_symlink_at_a_claim_is_never_written_through() {
    let fx = Fixture::new();
    let target = fx.precious("target");
    fx.request("r1");
    symlink(&target, &fx.path("requests/r1.claimed"));
    // A dangling one: a claim written through it would create a file outside the queue.
    let missing = fx.outside.join("missing");
    fx.request("r2");
    symlink(&missing, &fx.path("requests/r2.claimed"));
    let taken = fx.take(true).unwrap();
    assert_eq!(taken.len(), 2);
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS, "truncated");
    assert!(!missing.exists(), "a file was created outside the queue");
    assert!(fx.take(false).unwrap().is_empty());
    assert!(!missing.exists(), "a file was created outside the queue");
}

#[test]
fn a_symlink_in_place_of_requests_is_refused() {
    let fx = Fixture::new();
    let other = fx.outside.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a1.json"), PRECIOUS).unwrap();
    std::fs::remove_dir(fx.path("requests")).unwrap();
    symlink(&other, &fx.path("requests"));
    let err = fx.take(true).unwrap_err();
    assert!(err.to_string().contains("not a real directory"), "{err}");
    assert!(ops::anything_pending(&fx.layout, true).is_err());
    let results = fx.put(&["a1"]);
    assert!(results[0].result.is_err(), "{results:?}");
    let mut names: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a1.json"], "claimed or removed through the symlink");
    assert_eq!(std::fs::read(other.join("a1.json")).unwrap(), PRECIOUS);
    assert!(Queue::create(&fx.root).is_err(), "the gateway accepted it");
}

#[test]
fn a_symlink_in_place_of_responses_is_refused() {
    let fx = Fixture::new();
    let other = fx.outside.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    fx.request("a1");
    let queue = fx.queue();
    std::fs::remove_dir(fx.path("responses")).unwrap();
    symlink(&other, &fx.path("responses"));
    let results = fx.put(&["a1"]);
    assert!(results[0].result.is_err(), "{results:?}");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
    std::fs::write(other.join("a1.json"), PRECIOUS).unwrap();
    assert!(
        queue.take_response("a1", 1 << 20).is_err(),
        "read through it"
    );
    assert_eq!(std::fs::read(other.join("a1.json")).unwrap(), PRECIOUS);
    assert!(Queue::create(&fx.root).is_err(), "the gateway accepted it");
}

#[test]
fn queue_directories_of_another_user_are_refused() {
    let probe = tempfile::tempfile().unwrap();
    if std::os::unix::fs::MetadataExt::uid(&probe.metadata().unwrap()) != 0 {
        eprintln!("skipped: needs root to give a directory away");
        return;
    }
    let fx = Fixture::new();
    fx.request("a1");
    std::os::unix::fs::chown(fx.path("requests"), Some(4242), None).unwrap();
    let err = fx.take(false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("uid 4242"), "{err}");
    assert!(!fx.path("requests/a1.claimed").exists());
}

#[test]
fn fifos_never_block_a_put_or_a_take() {
    let fx = Fixture::new();
    for id in ["t1", "c1", "e1"] {
        fx.request(id);
    }
    mkfifo(&fx.path("responses/t1.json.tmp"));
    mkfifo(&fx.path("requests/c1.claimed"));
    std::fs::remove_file(fx.layout.request_file("e1")).unwrap();
    mkfifo(&fx.layout.request_file("e1"));
    let layout = fx.layout.clone();
    let taken = promptly("a recovering take", move || {
        ops::take_now(&layout, &take_opts(true))
    })
    .unwrap();
    let mut ids: Vec<&str> = taken.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["c1", "t1"], "a FIFO is no request");
    let layout = fx.layout.clone();
    let results = promptly("a put", move || ops::put_all(&layout, vec![item("t1")]));
    assert_eq!(delivered(&results), ["t1"], "{results:?}");
    mkfifo(&fx.path("responses/g1.json"));
    let queue = fx.queue();
    let read = promptly("the gateway's read", move || {
        queue.take_response("g1", 1 << 20)
    });
    assert!(read.is_err(), "{read:?}");
    assert!(
        !fx.path("responses/g1.json").exists(),
        "left to wedge the wait"
    );
}

#[test]
fn a_directory_at_the_temp_name_fails_only_that_answer() {
    let fx = Fixture::new();
    for id in ["a1", "b1", "c1", "e1"] {
        fx.request(id);
    }
    // Something inside, so it cannot simply be removed; an empty one is.
    std::fs::create_dir_all(fx.path("responses/b1.json.tmp/keep")).unwrap();
    std::fs::create_dir(fx.path("responses/e1.json.tmp")).unwrap();
    let results = fx.put(&["a1", "b1", "c1", "e1"]);
    assert_eq!(delivered(&results), ["a1", "c1", "e1"], "{results:?}");
    assert!(results[1].result.is_err());
    assert!(fx.path("responses/b1.json.tmp/keep").is_dir());
    for id in ["a1", "c1", "e1"] {
        assert_eq!(
            std::fs::read(fx.layout.response_file(id)).unwrap(),
            answer(id)
        );
    }
}

#[test]
fn forged_stale_locks_are_broken_quickly() {
    let fx = Fixture::new();
    let ids: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    for id in &ids {
        fx.request(id);
        let lock = fx.path(&format!("responses/.{id}.lock"));
        std::fs::create_dir(&lock).unwrap();
        set_age(&lock, Duration::from_secs(600));
    }
    let started = Instant::now();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = fx.put(&refs);
    let took = started.elapsed();
    assert_eq!(delivered(&results).len(), 40, "{results:?}");
    assert!(
        took < Duration::from_secs(2),
        "40 stale locks took {took:?}"
    );
    let responses = fx.listing("responses");
    assert!(
        responses.iter().all(|n| n.ends_with(".json")),
        "{responses:?}"
    );
}

#[test]
fn forged_live_locks_fail_only_their_answers_within_a_bound() {
    let fx = Fixture::new();
    let ids: Vec<String> = (0..42).map(|i| format!("l{i}")).collect();
    for id in &ids {
        fx.request(id);
    }
    // Forty fresh locks nobody will release; the first and last answers have none.
    for id in &ids[1..41] {
        std::fs::create_dir(fx.path(&format!("responses/.{id}.lock"))).unwrap();
    }
    let started = Instant::now();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = fx.put(&refs);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "40 forged locks took {took:?}"
    );
    assert_eq!(delivered(&results), ["l0", "l41"], "{results:?}");
    for r in &results[1..41] {
        let why = r.result.as_ref().unwrap_err();
        assert!(why.contains("held by another writer"), "{why}");
    }
    // Nothing was written without its lock.
    assert!(!fx.layout.response_file("l1").exists());
}

#[test]
fn a_stale_lock_with_something_inside_is_not_emptied() {
    let fx = Fixture::new();
    fx.request("k1");
    let lock = fx.path("responses/.k1.lock");
    std::fs::create_dir(&lock).unwrap();
    std::fs::write(lock.join("inside"), PRECIOUS).unwrap();
    set_age(&lock, Duration::from_secs(600));
    let results = fx.put(&["k1"]);
    assert!(results[0].result.is_err(), "{results:?}");
    assert_eq!(std::fs::read(lock.join("inside")).unwrap(), PRECIOUS);
}

#[test]
fn huge_forged_requests_are_refused_by_size() {
    let fx = Fixture::new();
    // Sparse: 60 MiB on paper, nothing on disk.
    let huge = std::fs::File::create(fx.layout.request_file("h1")).unwrap();
    huge.set_len(60 << 20).unwrap();
    fx.request("n1");
    let taken = fx.take(false).unwrap();
    let h1 = taken.iter().find(|t| t.id == "h1").unwrap();
    assert_eq!(h1.file, Err(TakeProblem::TooLarge { size: 60 << 20 }));
    let n1 = taken.iter().find(|t| t.id == "n1").unwrap();
    assert_eq!(n1.file.as_deref().unwrap(), b"{}\n");
    let response = std::fs::File::create(fx.layout.response_file("g1")).unwrap();
    response.set_len(60 << 20).unwrap();
    let err = fx.queue().take_response("g1", 1 << 20).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(!fx.layout.response_file("g1").exists());
}

#[test]
fn a_request_hard_linked_to_a_file_elsewhere_is_not_read() {
    let fx = Fixture::new();
    let target = fx.precious("secret");
    std::fs::hard_link(&target, fx.layout.request_file("x1")).unwrap();
    let taken = fx.take(false).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].file, Err(TakeProblem::Unreadable));
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS);
}

#[test]
fn the_gateway_never_writes_or_reads_through_planted_symlinks() {
    let fx = Fixture::new();
    let queue = fx.queue();
    let target = fx.precious("target");
    symlink(&target, &fx.path("requests/p1.json.tmp"));
    queue.publish("p1", b"{\"id\":\"p1\"}\n").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS, "written through");
    assert_eq!(
        std::fs::read(fx.layout.request_file("p1")).unwrap(),
        b"{\"id\":\"p1\"}\n"
    );
    symlink(&target, &fx.layout.response_file("p1"));
    assert!(
        queue.take_response("p1", 1 << 20).is_err(),
        "read a symlink"
    );
    assert!(!fx.layout.response_file("p1").exists());
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS);
    assert_eq!(queue.response_ids().unwrap(), Vec::<String>::new());
}
