//! The POSIX shell transport's own failure: a sandbox that prints nonsense. (The rules it
//! shares with every transport are in `transport_contract.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridge_host::runner::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Runner, RunnerError, Spawn,
};
use bridge_host::transport::{PosixTransport, PutItem, Transport, TransportError};
use common::take_opts;

const T: Duration = Duration::from_secs(20);

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
        .deliver(vec![PutItem {
            id: "a1".into(),
            file: b"{}".to_vec(),
        }])
        .await;
    assert!(
        matches!(deliver, Err(TransportError::Garbled(_))),
        "{deliver:?}"
    );
    let bad_id = t
        .deliver(vec![PutItem {
            id: "../a".into(),
            file: b"{}".to_vec(),
        }])
        .await;
    assert!(bad_id.is_err());
    assert_eq!(t.exec_count(), 2, "an invalid id costs no exec");
}
