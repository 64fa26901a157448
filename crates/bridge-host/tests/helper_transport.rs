//! The helper transports (the gateway binary's `take`/`put`, one exec per call, and its
//! `session`, one exec for all calls) on hand-written queue_v1 files: exact bytes, claims
//! and recovery, the inotify long poll, delivery only while the caller waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bridge_host::runner::{Exec, LocalRunner, NetnsSandbox, Runner};
use bridge_host::transport::{
    Delivery, HelperTransport, Outgoing, StreamTransport, TakeOptions, TakeProblem, Transport,
};
use common::*;

/// A transport under test and the number of execs it makes for a number of calls.
type UnderTest = (Box<dyn Transport>, fn(u64) -> u64);

/// Both helper transports over `runner`.
fn both(runner: Arc<dyn Runner>, q: &Path) -> [UnderTest; 2] {
    let bound = Duration::from_secs(20);
    let (q, bin) = (q.to_path_buf(), gateway_bin());
    [
        (
            Box::new(HelperTransport::new(
                runner.clone(),
                q.clone(),
                bin.clone(),
                bound,
            )),
            |calls| calls,
        ),
        (Box::new(StreamTransport::new(runner, q, bin, bound)), |_| 1),
    ]
}

fn local(q: &Path) -> [UnderTest; 2] {
    both(Arc::new(LocalRunner), q)
}

#[tokio::test]
async fn take_claims_recovers_and_keeps_bytes_exact() {
    for index in 0..2 {
        take_claims_recovers_and_keeps_bytes_exact_with(index).await;
    }
}

async fn take_claims_recovers_and_keeps_bytes_exact_with(index: usize) {
    let dir = queue_dir();
    let q = dir.path();
    let json = request_json(
        "h1",
        "POST",
        "/api/issues/i/comments",
        "{}",
        r#""é \"\\u0000 ok""#,
    );
    write_request(q, "h1", &json);
    write_request(q, "big", &"x".repeat(3000));
    std::fs::write(q.join("requests/not an id.json"), b"{}").unwrap();
    let (t, execs) = local(q).into_iter().nth(index).unwrap();
    let got = t
        .take(TakeOptions {
            envelope_limit: 2000,
            ..take_opts()
        })
        .await
        .unwrap();
    let by_id = |id: &str| got.iter().find(|i| i.id == id).unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(by_id("h1").file.unwrap(), format!("{json}\n").into_bytes());
    assert_eq!(by_id("big").file, Err(TakeProblem::TooLarge { size: 3001 }));
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
    assert!(again.iter().all(|i| i.previously_claimed));
    assert_eq!(t.exec_count(), execs(3));
}

#[tokio::test]
async fn the_long_poll_wakes_when_a_request_lands() {
    for index in 0..2 {
        the_long_poll_wakes_with(index).await;
    }
}

async fn the_long_poll_wakes_with(index: usize) {
    let dir = queue_dir();
    let q = dir.path().to_path_buf();
    let (t, _) = local(&q).into_iter().nth(index).unwrap();
    let writer = {
        let q = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            write_request(&q, "late", "{}");
        })
    };
    let wait = TakeOptions {
        wait: Duration::from_secs(20),
        ..take_opts()
    };
    let got = tokio::time::timeout(Duration::from_secs(10), t.take(wait))
        .await
        .expect("woke long before its 20 s wait")
        .unwrap();
    assert_eq!(got[0].id, "late");
    writer.await.unwrap();
}

#[tokio::test]
async fn put_writes_only_while_the_caller_waits() {
    for index in 0..2 {
        put_writes_only_while_the_caller_waits_with(index).await;
    }
}

async fn put_writes_only_while_the_caller_waits_with(index: usize) {
    let dir = queue_dir();
    let q = dir.path();
    write_request(q, "w1", "{}");
    write_request(q, "w2", "{}");
    let (t, _) = local(q).into_iter().nth(index).unwrap();
    t.take(take_opts()).await.unwrap();
    std::fs::remove_file(q.join("requests/w2.json")).unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let results = t
        .deliver(vec![
            Outgoing {
                id: "w1".into(),
                file: big.clone(),
            },
            Outgoing {
                id: "w2".into(),
                file: b"late".to_vec(),
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
    assert!(std::fs::read(q.join("responses/w1.json")).unwrap() == big);
    let left: Vec<String> = std::fs::read_dir(q.join("responses"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["w1.json"]);
    assert!(t
        .take(TakeOptions {
            include_claimed: true,
            ..take_opts()
        })
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn it_works_inside_a_namespace_sandbox() {
    for index in 0..2 {
        it_works_inside_a_namespace_sandbox_with(index).await;
    }
}

async fn it_works_inside_a_namespace_sandbox_with(index: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(NetnsSandbox::create(dir.path()).await.unwrap());
    let q = dir.path().join("queue");
    let json = request_json("n1", "GET", "/api/agents/me", "{}", r#""""#);
    let setup = format!(
        "mkdir -p '{q}/requests' '{q}/responses' && printf '%s\\n' '{json}' > '{q}/requests/n1.json'",
        q = q.display()
    );
    assert!(sandbox
        .exec(Exec::new(setup, Duration::from_secs(10)))
        .await
        .unwrap()
        .success());
    let (t, _) = both(sandbox.clone(), &q).into_iter().nth(index).unwrap();
    let got = t.take(take_opts()).await.unwrap();
    assert_eq!(
        got[0].file.as_deref().unwrap(),
        format!("{json}\n").as_bytes()
    );
    let results = t
        .deliver(vec![Outgoing {
            id: "n1".into(),
            file: b"answer\n".to_vec(),
        }])
        .await
        .unwrap();
    assert_eq!(results[0].1, Delivery::Delivered);
    let read = sandbox
        .exec(Exec::new(
            format!("cat '{}/responses/n1.json'", q.display()),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert_eq!(read.stdout, b"answer\n");
    assert!(
        !q.join("responses/n1.json").exists(),
        "the host cannot see the sandbox's files"
    );
    sandbox.destroy().await;
}
