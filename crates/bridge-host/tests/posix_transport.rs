//! The POSIX shell transport on hand-written queue_v1 files: batching, claims, recovery,
//! size limits, hostile names, long polling and delivery rules, one exec per call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bridge_host::runner::LocalRunner;
use bridge_host::transport::{
    Delivery, Outgoing, PosixTransport, TakeOptions, TakeProblem, Transport,
};
use common::*;

fn transport(queue: &Path) -> PosixTransport {
    PosixTransport::new(
        Arc::new(LocalRunner),
        queue.to_path_buf(),
        Duration::from_secs(20),
    )
}

fn opts() -> TakeOptions {
    TakeOptions {
        wait: Duration::ZERO,
        max_batch_bytes: 1 << 20,
        envelope_limit: 1 << 20,
        include_claimed: false,
    }
}

fn queue() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("requests")).unwrap();
    std::fs::create_dir_all(dir.path().join("responses")).unwrap();
    dir
}

#[tokio::test]
async fn take_returns_exact_bytes_claims_them_and_skips_junk() {
    let dir = queue();
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
    let got = t.take(opts()).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].id, "a1");
    assert_eq!(
        got[0].file.as_deref().unwrap(),
        format!("{json}\n").as_bytes()
    );
    assert!(!got[0].previously_claimed);
    assert!(q.join("requests/a1.claimed").exists());
    assert!(
        t.take(opts()).await.unwrap().is_empty(),
        "claimed requests are not taken twice"
    );
    let again = t
        .take(TakeOptions {
            include_claimed: true,
            ..opts()
        })
        .await
        .unwrap();
    assert!(again[0].previously_claimed);
    assert_eq!(t.exec_count(), 3);
}

#[tokio::test]
async fn too_large_files_and_batches_are_bounded() {
    let dir = queue();
    let q = dir.path();
    write_request(q, "big", &"x".repeat(5000));
    let t = transport(q);
    let got = t
        .take(TakeOptions {
            envelope_limit: 1000,
            ..opts()
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
            ..opts()
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "two 100-byte files fit in 250");
    let rest = t.take(opts()).await.unwrap();
    assert_eq!(rest.len(), 3);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_request_arrives() {
    let dir = queue();
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
            ..opts()
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
    let dir = queue();
    let q = dir.path();
    write_request(q, "w1", "{}");
    write_request(q, "w2", "{}");
    let t = transport(q);
    t.take(opts()).await.unwrap();
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
            ..opts()
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
    assert!(t.take(opts()).await.is_err());
}
