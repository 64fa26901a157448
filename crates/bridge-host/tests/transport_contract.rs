//! The transport contract, written once and run over every transport (stream, one-shot,
//! POSIX, shared directory) and every runner that can carry it (this machine's `sh`, an
//! exec prefix, a namespace sandbox whose files the host cannot see, a delayed channel, the
//! in-memory runner with no process at all, and E2B's envd through the fake E2B). Each test is named
//! `<scenario>::<transport>_<runner>`, so a failure says which; a failing scenario prints
//! the queue directory's listing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_e2b;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridge_host::runner::{
    BwrapSandbox, CommandRunner, DelayRunner, Exec, LocalRunner, MemoryRunner, Mounts, Runner,
};
use bridge_host::transport::{
    Delivery, OneShotTransport, PosixTransport, PutItem, SharedFsTransport, StreamTransport,
    TakeOptions, TakeProblem, Transport,
};
use common::*;

const T: Duration = Duration::from_secs(20);

/// Which transport a fixture builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    OneShot,
    Posix,
    SharedFs,
}

/// A queue, the runner the transport goes through, and the runner the test itself uses to
/// reach the queue's files (the same one when only the sandbox can see them).
struct Fixture {
    kind: Kind,
    runner: Arc<dyn Runner>,
    files: Arc<dyn Runner>,
    queue: PathBuf,
    sandbox: Option<Arc<BwrapSandbox>>,
    /// An E2B sandbox in the fake E2B, kept for the fixture's life.
    _e2b: Option<(bridge_host::runner::E2bSandbox, fake_e2b::FakeE2b)>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// The queue is on this machine; the transport goes through `runner`.
    async fn local(kind: Kind, runner: Arc<dyn Runner>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture::with(kind, runner, Arc::new(LocalRunner), None, dir).await
    }

    /// The queue is inside a namespace sandbox: every file operation goes through it.
    async fn sandboxed(kind: Kind) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // The gateway binary is a host file: bound in read-only, as an upload would put it.
        let mounts = Mounts {
            read_only: vec![gateway_bin().parent().unwrap().to_path_buf()],
            ..Mounts::default()
        };
        let sandbox = BwrapSandbox::create_with(dir.path(), &mounts)
            .await
            .unwrap();
        let sandbox = Arc::new(sandbox);
        let fixture = Fixture::with(kind, sandbox.clone(), sandbox.clone(), Some(sandbox), dir);
        let fixture = fixture.await;
        assert!(
            !fixture.queue.exists(),
            "the host must not see the sandbox's queue"
        );
        fixture
    }

    /// Over E2B's envd (the fake E2B), for both the transport and the test's own files.
    async fn e2b(kind: Kind) -> Fixture {
        let fake = fake_e2b::FakeE2b::start().await;
        let made = bridge_host::runner::E2bSandbox::create(&fake.config(), "base")
            .await
            .unwrap();
        let runner: Arc<dyn Runner> = made.runner();
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = Fixture::with(kind, runner.clone(), runner, None, dir).await;
        fixture._e2b = Some((made, fake));
        fixture
    }

    async fn with(
        kind: Kind,
        runner: Arc<dyn Runner>,
        files: Arc<dyn Runner>,
        sandbox: Option<Arc<BwrapSandbox>>,
        dir: tempfile::TempDir,
    ) -> Fixture {
        let fixture = Fixture {
            kind,
            runner,
            files,
            queue: dir.path().join("queue"),
            sandbox,
            _e2b: None,
            _dir: dir,
        };
        fixture.sh("mkdir -p requests responses", b"").await;
        fixture
    }

    fn transport(&self) -> Box<dyn Transport> {
        let (runner, q) = (self.runner.clone(), self.queue.clone());
        match self.kind {
            Kind::Stream => Box::new(StreamTransport::new(runner, q, gateway_bin(), T)),
            Kind::OneShot => Box::new(OneShotTransport::new(runner, q, gateway_bin(), T)),
            Kind::Posix => Box::new(PosixTransport::new(runner, q, T)),
            Kind::SharedFs => Box::new(SharedFsTransport::new(q)),
        }
    }

    /// The execs a transport makes for `calls` takes and delivers: one session for all of
    /// them on a stream, one exec (or call) each otherwise.
    fn execs(&self, calls: u64) -> u64 {
        match self.kind {
            Kind::Stream => 1,
            _ => calls,
        }
    }

    /// Runs `script` in the queue directory (through the files runner); panics with its
    /// stderr if it fails.
    async fn sh(&self, script: &str, stdin: &[u8]) -> Vec<u8> {
        let script = format!("mkdir -p \"$Q\" && cd \"$Q\" && {{\n{script}\n}}");
        let exec = Exec::new(script, T)
            .env("Q", self.queue.to_string_lossy())
            .stdin(stdin.to_vec());
        let out = self.files.exec(exec).await.unwrap();
        assert!(out.success(), "{}", out.stderr_text());
        out.stdout
    }

    /// A request file written as queue_v1 says: temporary name, then rename.
    async fn write_request(&self, id: &str, bytes: &[u8]) {
        let script =
            format!("cat > requests/{id}.json.tmp && mv requests/{id}.json.tmp requests/{id}.json");
        self.sh(&script, bytes).await;
    }

    async fn exists(&self, path: &str) -> bool {
        self.sh(
            &format!("if [ -e {path} ]; then echo yes; else echo no; fi"),
            b"",
        )
        .await
            == b"yes\n"
    }

    async fn read(&self, path: &str) -> Vec<u8> {
        self.sh(&format!("cat {path}"), b"").await
    }

    /// Every name in `dir`, hidden ones included, sorted.
    async fn list(&self, dir: &str) -> Vec<String> {
        let out = self.sh(&format!("ls -A {dir} | sort"), b"").await;
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The whole queue directory, for a failure's report.
    async fn listing(&self) -> String {
        let out = self
            .files
            .exec(Exec::new("ls -laR \"$Q\" 2>&1", T).env("Q", self.queue.to_string_lossy()))
            .await;
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(no listing: {e})"),
        }
    }

    /// Runs `scenario`; if it fails, prints the queue's listing before failing too.
    async fn check<F, Fut>(self, scenario: F)
    where
        F: FnOnce(Arc<Fixture>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fixture = Arc::new(self);
        let outcome = tokio::spawn(scenario(fixture.clone())).await;
        if let Err(failure) = outcome {
            eprintln!(
                "--- queue directory ({:?} over {:?}) ---\n{}",
                fixture.kind,
                fixture.runner,
                fixture.listing().await
            );
            std::panic::resume_unwind(failure.into_panic());
        }
        if let Some(sandbox) = &fixture.sandbox {
            sandbox.destroy().await;
        }
    }
}

/// `sh` through an exec prefix: the environment rides in stdin ahead of the script's.
fn prefixed() -> Arc<dyn Runner> {
    Arc::new(CommandRunner::parse("env --").unwrap())
}

/// A channel with 20 ms per round trip, as a provider's would have.
fn delayed() -> Arc<dyn Runner> {
    Arc::new(DelayRunner::new(
        Arc::new(LocalRunner),
        Duration::from_millis(20),
    ))
}

fn memory() -> Arc<dyn Runner> {
    Arc::new(MemoryRunner::new().with_queue_ops())
}

/// Runs one scenario over every transport and runner pairing, one test each.
macro_rules! contract {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            pairings! { $scenario:
                stream_local => Fixture::local(Kind::Stream, Arc::new(LocalRunner)),
                stream_prefixed => Fixture::local(Kind::Stream, prefixed()),
                stream_delayed => Fixture::local(Kind::Stream, delayed()),
                stream_sandboxed => Fixture::sandboxed(Kind::Stream),
                stream_memory => Fixture::local(Kind::Stream, memory()),
                stream_e2b => Fixture::e2b(Kind::Stream),
                oneshot_local => Fixture::local(Kind::OneShot, Arc::new(LocalRunner)),
                oneshot_sandboxed => Fixture::sandboxed(Kind::OneShot),
                oneshot_memory => Fixture::local(Kind::OneShot, memory()),
                oneshot_e2b => Fixture::e2b(Kind::OneShot),
                posix_local => Fixture::local(Kind::Posix, Arc::new(LocalRunner)),
                posix_prefixed => Fixture::local(Kind::Posix, prefixed()),
                posix_sandboxed => Fixture::sandboxed(Kind::Posix),
                posix_e2b => Fixture::e2b(Kind::Posix),
                shared_fs => Fixture::local(Kind::SharedFs, Arc::new(LocalRunner)),
            }
        }
    };
}

/// One test per pairing: the fixture, then the scenario on it.
macro_rules! pairings {
    ($scenario:ident: $($name:ident => $fixture:expr),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $fixture.await.check(super::$scenario).await;
            }
        )*
    };
}

contract!(exact_bytes_claims_and_recovery);
contract!(names_sizes_batches_and_order);
contract!(long_poll_wakes_on_arrival);
contract!(delivery_only_while_the_caller_waits);
contract!(a_missing_queue_is_an_error_not_an_empty_batch);

fn every_byte() -> Vec<u8> {
    (0..=255u8).rev().chain(0..=255u8).collect()
}

async fn exact_bytes_claims_and_recovery(fx: Arc<Fixture>) {
    let t = fx.transport();
    let normal = format!(
        "{}\n",
        request_json(
            "n1",
            "POST",
            "/api/issues/i1/comments",
            "{}",
            r#""héllo \"x\"""#
        )
    );
    let huge_body = format!(
        "{}\n",
        request_json(
            "h1",
            "POST",
            "/api/x",
            "{}",
            &format!("\"{}\"", "b".repeat(3 << 20))
        )
    );
    fx.write_request("n1", normal.as_bytes()).await;
    fx.write_request("w1", &every_byte()).await;
    fx.write_request("h1", huge_body.as_bytes()).await;
    fx.sh(": > requests/orphan.claimed", b"").await;
    let opts = TakeOptions {
        max_batch_bytes: 8 << 20,
        envelope_limit: 8 << 20,
        ..take_opts()
    };
    let mut got = t.take(opts).await.unwrap();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["h1", "n1", "w1"]);
    assert!(got[0].file.as_deref().unwrap() == huge_body.as_bytes());
    assert_eq!(got[1].file.as_deref().unwrap(), normal.as_bytes());
    assert_eq!(got[2].file.as_deref().unwrap(), every_byte());
    assert!(got.iter().all(|i| !i.previously_claimed));
    assert_eq!(
        fx.list("requests").await,
        [
            "h1.claimed",
            "h1.json",
            "n1.claimed",
            "n1.json",
            "w1.claimed",
            "w1.json"
        ],
        "claims made, the orphaned claim removed"
    );
    assert!(t.take(opts).await.unwrap().is_empty(), "taken twice");
    let again = t
        .take(TakeOptions {
            include_claimed: true,
            ..opts
        })
        .await
        .unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|i| i.previously_claimed));
    assert_eq!(t.exec_count(), fx.execs(3), "execs for three takes");
}

async fn names_sizes_batches_and_order(fx: Arc<Fixture>) {
    let t = fx.transport();
    fx.sh(
        "echo '{}' > x.json; echo '{}' > 'requests/a b.json'; echo '{}' > requests/x.json.tmp; \
         echo '{}' > requests/.json; mkdir requests/dir.json; ln -s ../x.json requests/link",
        b"",
    )
    .await;
    assert!(
        t.take(take_opts()).await.unwrap().is_empty(),
        "junk was taken"
    );
    fx.write_request("big", &vec![b'x'; 5000]).await;
    let got = t
        .take(TakeOptions {
            envelope_limit: 1000,
            ..take_opts()
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].file, Err(TakeProblem::TooLarge { size: 5000 }));
    assert!(fx.exists("requests/big.claimed").await);
    // Five 100-byte requests, oldest first by modification time (not by name).
    for (i, id) in ["m4", "m2", "m0", "m3", "m1"].iter().enumerate() {
        fx.write_request(id, &[b'y'; 100]).await;
        fx.sh(
            &format!("touch -d '2020-01-01 00:00:0{i}' requests/{id}.json"),
            b"",
        )
        .await;
    }
    let first = t
        .take(TakeOptions {
            max_batch_bytes: 250,
            ..take_opts()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = first.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["m4", "m2"], "the two oldest that fit in 250 bytes");
    let rest = t
        .take(TakeOptions {
            max_batch_bytes: 1,
            ..take_opts()
        })
        .await
        .unwrap();
    assert_eq!(
        rest.len(),
        1,
        "one request even when it alone exceeds the batch"
    );
    assert_eq!(rest[0].id, "m0");
    assert_eq!(t.take(take_opts()).await.unwrap().len(), 2);
    assert_eq!(t.exec_count(), fx.execs(5));
}

async fn long_poll_wakes_on_arrival(fx: Arc<Fixture>) {
    let t = fx.transport();
    let take = t.take(TakeOptions {
        wait: Duration::from_secs(30),
        ..take_opts()
    });
    let arrive = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        fx.write_request("late", b"{}\n").await;
    };
    // Bounded well below the 30 s wait: returning at all proves the early wake-up.
    let (got, ()) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(take, arrive)
    })
    .await
    .expect("the long poll did not wake when a request arrived");
    let got = got.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "late");
    assert_eq!(t.exec_count(), fx.execs(1));
}

async fn delivery_only_while_the_caller_waits(fx: Arc<Fixture>) {
    let t = fx.transport();
    for id in ["d1", "d2", "d3"] {
        fx.write_request(id, b"{}\n").await;
    }
    assert_eq!(t.take(take_opts()).await.unwrap().len(), 3);
    fx.sh("rm requests/d2.json", b"").await; // d2's caller gave up
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
    let results = t
        .deliver(vec![
            PutItem {
                id: "d1".into(),
                file: b"{\"answer\":1}\n".to_vec(),
            },
            PutItem {
                id: "d2".into(),
                file: b"{\"answer\":2}\n".to_vec(),
            },
            PutItem {
                id: "d3".into(),
                file: big.clone(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            ("d1".into(), Ok(Delivery::Delivered)),
            ("d2".into(), Ok(Delivery::CallerGone)),
            ("d3".into(), Ok(Delivery::Delivered)),
        ]
    );
    assert_eq!(fx.read("responses/d1.json").await, b"{\"answer\":1}\n");
    assert!(fx.read("responses/d3.json").await == big);
    assert_eq!(
        fx.list("responses").await,
        ["d1.json", "d3.json"],
        "no temp files, locks or late answers left"
    );
    // As Paperclip's host does, delivery removes the answered request and its claim.
    assert_eq!(fx.list("requests").await, Vec::<String>::new());
    let recovery = TakeOptions {
        include_claimed: true,
        ..take_opts()
    };
    assert!(
        t.take(recovery).await.unwrap().is_empty(),
        "answered, taken again"
    );
    // The gateway reads its answers and removes them.
    fx.sh("rm responses/d1.json responses/d3.json", b"").await;
    assert!(t.take(recovery).await.unwrap().is_empty());
    assert_eq!(fx.list("requests").await, Vec::<String>::new());
    assert_eq!(
        t.exec_count(),
        fx.execs(4),
        "execs for three takes and a deliver"
    );
}

async fn a_missing_queue_is_an_error_not_an_empty_batch(fx: Arc<Fixture>) {
    fx.sh("cd .. && rm -r queue", b"").await;
    let t = fx.transport();
    assert!(t.take(take_opts()).await.is_err(), "{:?}", fx.kind);
}
