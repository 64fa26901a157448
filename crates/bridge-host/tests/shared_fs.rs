//! The shared-directory transport (`worker --shared-fs`) against a hostile sandbox: it
//! runs the gateway's queue operations on the host, on a directory the sandbox can write,
//! so nothing the sandbox plants there may make the host write or read outside the queue,
//! block, or lose the other answers of a batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge_host::transport::{Delivery, PutItem, SharedFsTransport, TakeOptions, Transport};

/// What a file outside the queue holds; it must never change.
const PRECIOUS: &[u8] = b"outside the queue: never to be touched\n";
/// A bound for calls that must not block at all (generous for a loaded machine).
const PROMPT: Duration = Duration::from_secs(5);

/// A queue the gateway would make, beside an `outside` directory.
struct Fixture {
    _dir: tempfile::TempDir,
    queue: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        bridge_server::Queue::create(&queue).unwrap();
        Fixture {
            _dir: dir,
            queue,
            outside,
        }
    }

    fn transport(&self) -> SharedFsTransport {
        SharedFsTransport::new(self.queue.clone())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.queue.join(rel)
    }

    fn request(&self, id: &str) {
        std::fs::write(self.path(&format!("requests/{id}.json")), b"{}\n").unwrap();
    }

    fn precious(&self, name: &str) -> PathBuf {
        let path = self.outside.join(name);
        std::fs::write(&path, PRECIOUS).unwrap();
        path
    }
}

fn take_opts(include_claimed: bool) -> TakeOptions {
    TakeOptions {
        wait: Duration::ZERO,
        max_batch_bytes: 1 << 20,
        envelope_limit: 1 << 20,
        include_claimed,
    }
}

fn items(ids: &[&str]) -> Vec<PutItem> {
    ids.iter()
        .map(|id| PutItem {
            id: id.to_string(),
            file: answer(id),
        })
        .collect()
}

fn answer(id: &str) -> Vec<u8> {
    format!("{{\"answer\":\"{id}\"}}\n").into_bytes()
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Awaits `call` for at most [`PROMPT`]. If it blocked on `fifo`, a reader is opened so
/// the blocked thread can finish (else the runtime would wait for it forever), and the
/// test fails.
async fn promptly<T>(fifo: &Path, call: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PROMPT, call).await {
        Ok(out) => out,
        Err(_) => {
            let fifo = fifo.to_owned();
            std::thread::spawn(move || std::fs::read(fifo));
            panic!("blocked on a FIFO");
        }
    }
}

#[tokio::test]
async fn a_directory_at_one_temp_name_does_not_stop_the_batch() {
    let fx = Fixture::new();
    for id in ["a1", "b1", "c1"] {
        fx.request(id);
    }
    std::fs::create_dir_all(fx.path("responses/b1.json.tmp/keep")).unwrap();
    let t = fx.transport();
    let result = t.deliver(items(&["a1", "b1", "c1"])).await.unwrap();
    for id in ["a1", "c1"] {
        let path = fx.path(&format!("responses/{id}.json"));
        assert_eq!(std::fs::read(path).ok(), Some(answer(id)), "{id} lost");
    }
    // Only b1 failed, and the result says so: the worker retries b1 alone.
    assert_eq!(result[0], ("a1".into(), Ok(Delivery::Delivered)));
    assert_eq!(result[2], ("c1".into(), Ok(Delivery::Delivered)));
    assert!(result[1].1.is_err(), "{result:?}");
    std::fs::remove_dir_all(fx.path("responses/b1.json.tmp")).unwrap();
    let again = t.deliver(items(&["b1"])).await.unwrap();
    assert_eq!(again, [("b1".into(), Ok(Delivery::Delivered))]);
}

#[tokio::test]
async fn a_symlink_at_a_temp_name_is_not_written_through() {
    let fx = Fixture::new();
    let target = fx.precious("target");
    fx.request("s1");
    std::os::unix::fs::symlink(&target, fx.path("responses/s1.json.tmp")).unwrap();
    let results = fx.transport().deliver(items(&["s1"])).await.unwrap();
    assert_eq!(results, [("s1".into(), Ok(Delivery::Delivered))]);
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS, "written through");
    assert_eq!(
        std::fs::read(fx.path("responses/s1.json")).unwrap(),
        answer("s1")
    );
}

#[tokio::test]
async fn a_symlink_in_place_of_requests_is_refused() {
    let fx = Fixture::new();
    let other = fx.outside.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("x1.json"), PRECIOUS).unwrap();
    std::fs::remove_dir(fx.path("requests")).unwrap();
    std::os::unix::fs::symlink(&other, fx.path("requests")).unwrap();
    let t = fx.transport();
    assert!(
        t.take(take_opts(true)).await.is_err(),
        "took from elsewhere"
    );
    let put = t.deliver(items(&["x1"])).await;
    assert!(
        put.as_ref()
            .map_or(true, |r| r.iter().all(|(_, o)| o.is_err())),
        "{put:?}"
    );
    let names: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["x1.json"], "claimed or removed through the symlink");
    assert_eq!(std::fs::read(other.join("x1.json")).unwrap(), PRECIOUS);
}

#[tokio::test]
async fn a_fifo_at_a_temp_name_or_a_claim_never_blocks() {
    let fx = Fixture::new();
    fx.request("f1");
    fx.request("f2");
    let t = fx.transport();
    let claim = fx.path("requests/f2.claimed");
    mkfifo(&claim);
    let taken = promptly(&claim, t.take(take_opts(true))).await.unwrap();
    assert_eq!(taken.len(), 2);
    let tmp = fx.path("responses/f1.json.tmp");
    mkfifo(&tmp);
    let results = promptly(&tmp, t.deliver(items(&["f1"]))).await.unwrap();
    assert_eq!(results, [("f1".into(), Ok(Delivery::Delivered))]);
}
