//! The POSIX shell transport on hand-written queue_v1 files: batching, claims, recovery,
//! size limits, hostile names, long polling and delivery rules, one exec per call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bridge_host::runner::{
    BoxFuture, Capabilities, CommandRunner, Exec, ExecOutput, ExecStream, LocalRunner,
    NetnsSandbox, Runner, RunnerError, Spawn,
};
use bridge_host::transport::{
    Delivery, Outgoing, PosixTransport, TakeOptions, TakeProblem, Transport, TransportError,
};
use common::*;

fn transport(queue: &Path) -> PosixTransport {
    PosixTransport::new(
        Arc::new(LocalRunner),
        queue.to_path_buf(),
        Duration::from_secs(20),
    )
}

#[tokio::test]
async fn take_returns_exact_bytes_claims_them_and_skips_junk() {
    let dir = queue_dir();
    let q = dir.path();
    let json = request_json("a1", "GET", "/api/agents/me", "{}", r#""é \" \\n""#);
    write_request(q, "a1", &json);
    for junk in [
        "a b.json",
        "x.json.tmp",
        "y.claimed",
        ".json",
        "semi;colon.json",
    ] {
        std::fs::write(q.join("requests").join(junk), b"{}").unwrap();
    }
    let t = transport(q);
    let got = t.take(take_opts()).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].id, "a1");
    assert_eq!(
        got[0].file.as_deref().unwrap(),
        format!("{json}\n").as_bytes()
    );
    assert!(!got[0].previously_claimed);
    assert!(q.join("requests/a1.claimed").exists());
    assert!(
        t.take(take_opts()).await.unwrap().is_empty(),
        "claimed requests are not taken twice"
    );
    let again = t
        .take(TakeOptions {
            include_claimed: true,
            ..take_opts()
        })
        .await
        .unwrap();
    assert!(again[0].previously_claimed);
    assert_eq!(t.exec_count(), 3);
}

#[tokio::test]
async fn too_large_files_and_batches_are_bounded() {
    let dir = queue_dir();
    let q = dir.path();
    write_request(q, "big", &"x".repeat(5000));
    let t = transport(q);
    let got = t
        .take(TakeOptions {
            envelope_limit: 1000,
            ..take_opts()
        })
        .await
        .unwrap();
    assert_eq!(got[0].file, Err(TakeProblem::TooLarge { size: 5001 }));
    for i in 0..5 {
        write_request(q, &format!("m{i}"), &"y".repeat(99));
    }
    let first = t
        .take(TakeOptions {
            max_batch_bytes: 250,
            ..take_opts()
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "two 100-byte files fit in 250");
    let rest = t.take(take_opts()).await.unwrap();
    assert_eq!(rest.len(), 3);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_request_arrives() {
    let dir = queue_dir();
    let q = dir.path().to_path_buf();
    let t = transport(&q);
    let writer = {
        let q = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            write_request(&q, "late", "{}");
        })
    };
    let got = tokio::time::timeout(
        Duration::from_secs(8),
        t.take(TakeOptions {
            wait: Duration::from_secs(10),
            ..take_opts()
        }),
    )
    .await
    .expect("returned before its 10 s wait")
    .unwrap();
    assert_eq!(got[0].id, "late");
    writer.await.unwrap();
    assert_eq!(t.exec_count(), 1);
}

#[tokio::test]
async fn deliver_writes_only_while_the_caller_waits() {
    let dir = queue_dir();
    let q = dir.path();
    write_request(q, "w1", "{}");
    write_request(q, "w2", "{}");
    let t = transport(q);
    t.take(take_opts()).await.unwrap();
    std::fs::remove_file(q.join("requests/w2.json")).unwrap(); // w2's caller gave up
    let results = t
        .deliver(vec![
            Outgoing {
                id: "w1".into(),
                file: b"{\"answer\":1}\n".to_vec(),
            },
            Outgoing {
                id: "w2".into(),
                file: b"{\"answer\":2}\n".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            ("w1".into(), Delivery::Delivered),
            ("w2".into(), Delivery::CallerGone)
        ]
    );
    assert_eq!(
        std::fs::read(q.join("responses/w1.json")).unwrap(),
        b"{\"answer\":1}\n"
    );
    assert!(!q.join("responses/w2.json").exists());
    let names: Vec<String> = std::fs::read_dir(q.join("responses"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["w1.json"], "no temp files or locks left");
    assert!(!q.join("requests/w1.claimed").exists());
    assert!(
        t.take(TakeOptions {
            include_claimed: true,
            ..take_opts()
        })
        .await
        .unwrap()
        .is_empty(),
        "answered requests are not taken again"
    );
    assert_eq!(t.exec_count(), 3);
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_an_empty_batch() {
    let t = transport(Path::new("/nonexistent/queue"));
    assert!(t.take(take_opts()).await.is_err());
}

// ---------------------------------------------------------------------------------------
// The same scenarios through this machine's `sh` and through a network-isolated sandbox
// whose files the host cannot see: every file operation below goes through the runner.

/// A queue reachable only through `runner`, plus the guards that keep it alive.
struct Fixture {
    runner: Arc<dyn Runner>,
    queue: PathBuf,
    sandbox: Option<Arc<NetnsSandbox>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture::with(Arc::new(LocalRunner), None, dir).await
    }

    /// Through an exec prefix: the environment rides in stdin ahead of the script's.
    async fn prefixed() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let runner = CommandRunner::parse("env --").unwrap();
        Fixture::with(Arc::new(runner), None, dir).await
    }

    async fn sandboxed() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Arc::new(NetnsSandbox::create(dir.path()).await.unwrap());
        Fixture::with(sandbox.clone(), Some(sandbox), dir).await
    }

    async fn with(
        runner: Arc<dyn Runner>,
        sandbox: Option<Arc<NetnsSandbox>>,
        dir: tempfile::TempDir,
    ) -> Fixture {
        let fixture = Fixture {
            runner,
            queue: dir.path().join("queue"),
            sandbox,
            _dir: dir,
        };
        fixture.sh("mkdir -p requests responses", b"").await;
        fixture
    }

    fn transport(&self) -> PosixTransport {
        PosixTransport::new(self.runner.clone(), self.queue.clone(), T)
    }

    /// Runs `script` in the queue directory (through the runner); panics with its stderr
    /// if it fails.
    async fn sh(&self, script: &str, stdin: &[u8]) -> Vec<u8> {
        let script = format!("mkdir -p \"$Q\" && cd \"$Q\" && {{\n{script}\n}}");
        let exec = Exec::new(script, T)
            .env("Q", self.queue.to_string_lossy())
            .stdin(stdin.to_vec());
        let out = self.runner.exec(exec).await.unwrap();
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

    async fn finish(self) {
        if let Some(sandbox) = &self.sandbox {
            sandbox.destroy().await;
        }
    }
}

const T: Duration = Duration::from_secs(20);

/// Runs one scenario through `LocalRunner`, a `CommandRunner` and a `NetnsSandbox`.
macro_rules! on_both_runners {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn local() {
                let fixture = Fixture::local().await;
                super::$scenario(&fixture).await;
                fixture.finish().await;
            }

            #[tokio::test]
            async fn prefixed() {
                let fixture = Fixture::prefixed().await;
                super::$scenario(&fixture).await;
                fixture.finish().await;
            }

            #[tokio::test]
            async fn sandboxed() {
                let fixture = Fixture::sandboxed().await;
                assert!(
                    !fixture.queue.exists(),
                    "the host must not see the sandbox's queue"
                );
                super::$scenario(&fixture).await;
                fixture.finish().await;
            }
        }
    };
}

on_both_runners!(exact_bytes_claims_and_recovery);
on_both_runners!(names_sizes_batches_and_order);
on_both_runners!(long_poll_wakes_on_arrival);
on_both_runners!(delivery_only_while_the_caller_waits);

fn every_byte() -> Vec<u8> {
    (0..=255u8).rev().chain(0..=255u8).collect()
}

async fn exact_bytes_claims_and_recovery(fx: &Fixture) {
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
    assert_eq!(t.exec_count(), 3, "one exec per take");
}

async fn names_sizes_batches_and_order(fx: &Fixture) {
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
    assert_eq!(t.exec_count(), 5);
}

async fn long_poll_wakes_on_arrival(fx: &Fixture) {
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
    assert_eq!(t.exec_count(), 1);
}

async fn delivery_only_while_the_caller_waits(fx: &Fixture) {
    let t = fx.transport();
    for id in ["d1", "d2", "d3"] {
        fx.write_request(id, b"{}\n").await;
    }
    assert_eq!(t.take(take_opts()).await.unwrap().len(), 3);
    fx.sh("rm requests/d2.json", b"").await; // d2's caller gave up
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
    let results = t
        .deliver(vec![
            Outgoing {
                id: "d1".into(),
                file: b"{\"answer\":1}\n".to_vec(),
            },
            Outgoing {
                id: "d2".into(),
                file: b"{\"answer\":2}\n".to_vec(),
            },
            Outgoing {
                id: "d3".into(),
                file: big.clone(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            ("d1".into(), Delivery::Delivered),
            ("d2".into(), Delivery::CallerGone),
            ("d3".into(), Delivery::Delivered),
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
    assert_eq!(t.exec_count(), 4, "one exec per take and per deliver");
}

/// A runner whose sandbox prints nonsense instead of running the script.
#[derive(Debug)]
struct Nonsense;

impl Runner for Nonsense {
    fn exec(&self, _: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async {
            Ok(ExecOutput {
                code: Some(0),
                stdout: b"Welcome to the machine\nlast login: never\n".to_vec(),
                ..ExecOutput::default()
            })
        })
    }

    fn spawn(&self, _: Spawn) -> Result<tokio::process::Child, RunnerError> {
        Err(RunnerError::NoStreaming)
    }

    fn stream(&self, _: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async { Err(RunnerError::NoStreaming) })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

#[tokio::test]
async fn nonsense_from_the_sandbox_is_an_error() {
    let t = PosixTransport::new(Arc::new(Nonsense), PathBuf::from("q"), T);
    let take = t.take(take_opts()).await;
    assert!(matches!(take, Err(TransportError::Garbled(_))), "{take:?}");
    let deliver = t
        .deliver(vec![Outgoing {
            id: "a1".into(),
            file: b"{}".to_vec(),
        }])
        .await;
    assert!(
        matches!(deliver, Err(TransportError::Garbled(_))),
        "{deliver:?}"
    );
    let bad_id = t
        .deliver(vec![Outgoing {
            id: "../a".into(),
            file: b"{}".to_vec(),
        }])
        .await;
    assert!(bad_id.is_err());
    assert_eq!(t.exec_count(), 2, "an invalid id costs no exec");
}
