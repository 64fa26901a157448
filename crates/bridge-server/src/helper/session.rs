//! `session`: the helper's queue operations over one long-lived exec. The host writes
//! commands on the session's stdin and reads replies on its stdout, so once the session is
//! open a request costs no exec at all, only two messages on a stream.
//!
//! The wire is NDJSON both ways. The session first prints `{"session":1}`, then answers:
//!
//! - `{"seq":N,"take":{"waitMs","maxBytes","envelopeBytes","includeClaimed"}}` with
//!   `{"seq":N,"taken":[...]}` (items as `take` prints them);
//! - `{"seq":N,"put":[{"id","file"}...]}` with `{"seq":N,"put":[{"id","result"}...]}`;
//! - `{"cancel":N}`: take N stops waiting and, if it has claimed nothing yet, replies with
//!   an empty batch at once (the host gave up on it: a stopping worker);
//! - anything it cannot act on with `{"seq":N,"error":"..."}` (`seq` 0 if unreadable).
//!
//! Commands run concurrently (a take may wait while puts go through), so replies come in
//! any order; `seq` pairs them. The session ends when its stdin does (the host is gone).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bridge_protocol::layout::QueueLayout;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{lines, Put, RequestWatch, TakeOptions, Taken};

/// The first line a session prints; its version is the wire's.
pub const HELLO: &str = r#"{"session":1}"#;

/// A command, as the host sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Take(TakeOptions),
    Put(Vec<(String, Vec<u8>)>),
    /// Stop waiting in take `seq` (no reply of its own).
    Cancel(u64),
}

/// A reply, as the session sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Taken(Vec<Taken>),
    Put(Vec<(String, Result<Put, String>)>),
    Error(String),
}

/// The line for command `seq`.
pub fn command_line(seq: u64, command: &Command) -> String {
    match command {
        Command::Take(opts) => json!({ "seq": seq, "take": {
            "waitMs": opts.wait.as_millis() as u64,
            "maxBytes": opts.max_batch_bytes,
            "envelopeBytes": opts.envelope_limit,
            "includeClaimed": opts.include_claimed,
        }}),
        Command::Put(files) => {
            let items: Vec<Value> = files
                .iter()
                .map(|(id, file)| json!({ "id": id, "file": STANDARD.encode(file) }))
                .collect();
            json!({ "seq": seq, "put": items })
        }
        Command::Cancel(take) => json!({ "cancel": take }),
    }
    .to_string()
}

/// Reads a command line: `(seq, command or why not)`.
pub fn parse_command(line: &str) -> (u64, Result<Command, String>) {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return (0, Err("a command line is not JSON".into()));
    };
    let seq = v["seq"].as_u64().unwrap_or(0);
    let command = if let Some(take) = v["cancel"].as_u64() {
        Ok(Command::Cancel(take))
    } else if let Some(take) = v.get("take") {
        take_options(take).map(Command::Take)
    } else if let Some(items) = v["put"].as_array() {
        items
            .iter()
            .map(put_item)
            .collect::<Option<Vec<_>>>()
            .map(Command::Put)
            .ok_or_else(|| "a put item needs an id and a base64 file".into())
    } else {
        Err("unknown command (take or put)".into())
    };
    (seq, command)
}

fn take_options(v: &Value) -> Result<TakeOptions, String> {
    let number = |name: &str| {
        v[name]
            .as_u64()
            .ok_or_else(|| format!("take needs a number {name}"))
    };
    Ok(TakeOptions {
        wait: Duration::from_millis(number("waitMs")?),
        max_batch_bytes: number("maxBytes")? as usize,
        envelope_limit: number("envelopeBytes")? as usize,
        include_claimed: v["includeClaimed"].as_bool().unwrap_or(false),
    })
}

fn put_item(v: &Value) -> Option<(String, Vec<u8>)> {
    let id = v["id"].as_str()?.to_owned();
    let file = STANDARD.decode(v["file"].as_str()?).ok()?;
    Some((id, file))
}

/// The line for reply `seq`.
pub fn reply_line(seq: u64, reply: &Reply) -> String {
    match reply {
        Reply::Taken(taken) => {
            let items: Vec<Value> = taken.iter().map(lines::taken_value).collect();
            json!({ "seq": seq, "taken": items })
        }
        Reply::Put(results) => {
            let items: Vec<Value> = results
                .iter()
                .map(|(id, result)| lines::put_result_value(id, result.clone()))
                .collect();
            json!({ "seq": seq, "put": items })
        }
        Reply::Error(why) => json!({ "seq": seq, "error": why }),
    }
    .to_string()
}

/// Reads a reply line; `None` if it is malformed (the sandbox is untrusted). Taken items
/// that do not parse (an invalid id, say) are dropped.
pub fn parse_reply(line: &[u8]) -> Option<(u64, Reply)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let seq = v["seq"].as_u64()?;
    let reply = if let Some(items) = v["taken"].as_array() {
        Reply::Taken(items.iter().filter_map(lines::parse_taken_value).collect())
    } else if let Some(items) = v["put"].as_array() {
        Reply::Put(
            items
                .iter()
                .map(lines::parse_put_result_value)
                .collect::<Option<_>>()?,
        )
    } else {
        Reply::Error(v["error"].as_str()?.to_owned())
    };
    Some((seq, reply))
}

/// Serves commands from `input` until it ends, writing replies to `output`.
pub async fn serve<R, W>(layout: QueueLayout, input: R, output: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if !layout.responses_dir().is_dir() {
        return Err(io::Error::other(format!(
            "no queue at {}",
            layout.root().display()
        )));
    }
    let (replies, queue) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(write_lines(output, queue));
    let _ = replies.send(HELLO.to_owned());
    let mut lines = BufReader::new(input).lines();
    let mut takes = JoinSet::new();
    let mut cancels: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    // One watch for the session: takes queue for it (the host sends one at a time).
    let watch = Arc::new(tokio::sync::Mutex::new(RequestWatch::new(layout.clone())));
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        match parse_command(&line) {
            (seq, Ok(Command::Take(opts))) => {
                let (cancel, cancelled) = oneshot::channel();
                cancels.insert(seq, cancel);
                takes.spawn(take(seq, opts, watch.clone(), cancelled, replies.clone()));
            }
            // Puts are a few file operations each: done in line, in arrival order.
            (seq, Ok(Command::Put(files))) => {
                let _ = replies.send(reply_line(seq, &put_all(&layout, files)));
            }
            (_, Ok(Command::Cancel(take))) => {
                if let Some(cancel) = cancels.remove(&take) {
                    let _ = cancel.send(());
                }
            }
            (seq, Err(why)) => {
                let _ = replies.send(reply_line(seq, &Reply::Error(why)));
            }
        }
        while let Some(done) = takes.try_join_next() {
            if let Ok(seq) = done {
                cancels.remove(&seq);
            }
        }
    }
    // The host is gone: a waiting take has claimed nothing yet, so stopping it loses nothing.
    takes.abort_all();
    drop(replies);
    writer.await.map_err(io::Error::other)?
}

/// Take `seq`: waits for the watch and then for a request, unless cancelled first (a
/// cancelled take has claimed nothing: claiming happens after the wait, without a pause).
async fn take(
    seq: u64,
    opts: TakeOptions,
    watch: Arc<tokio::sync::Mutex<RequestWatch>>,
    cancelled: oneshot::Receiver<()>,
    replies: mpsc::UnboundedSender<String>,
) -> u64 {
    let taken = async { watch.lock().await.take(&opts).await };
    let reply = tokio::select! {
        taken = taken => match taken {
            Ok(taken) => Reply::Taken(taken),
            Err(e) => Reply::Error(format!("take failed: {e}")),
        },
        _ = cancelled => Reply::Taken(Vec::new()),
    };
    let _ = replies.send(reply_line(seq, &reply));
    seq
}

fn put_all(layout: &QueueLayout, files: Vec<(String, Vec<u8>)>) -> Reply {
    let results = files
        .into_iter()
        .map(|(id, file)| {
            let result = super::put(layout, &id, &file).map_err(|e| e.to_string());
            (id, result)
        })
        .collect();
    Reply::Put(results)
}

async fn write_lines<W: AsyncWrite + Unpin>(
    mut output: W,
    mut queue: mpsc::UnboundedReceiver<String>,
) -> io::Result<()> {
    while let Some(mut line) = queue.recv().await {
        line.push('\n');
        output.write_all(line.as_bytes()).await?;
        // Everything already queued goes out before the flush (one write per burst).
        while let Ok(mut more) = queue.try_recv() {
            more.push('\n');
            output.write_all(more.as_bytes()).await?;
        }
        output.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Problem;
    use super::*;

    #[test]
    fn commands_round_trip() {
        let take = Command::Take(TakeOptions {
            wait: Duration::from_millis(1500),
            max_batch_bytes: 9,
            envelope_limit: 7,
            include_claimed: true,
        });
        let put = Command::Put(vec![("a".into(), vec![0, 255]), ("b".into(), Vec::new())]);
        for command in [take, put, Command::Cancel(41)] {
            let (_, parsed) = parse_command(&command_line(42, &command));
            assert_eq!(parsed, Ok(command));
        }
        assert!(parse_command(r#"{"seq":3,"take":{"waitMs":1}}"#).1.is_err());
        assert!(parse_command(r#"{"seq":3,"put":[{"id":"a","file":"%%"}]}"#)
            .1
            .is_err());
        assert_eq!(parse_command("nonsense").0, 0);
    }

    #[test]
    fn replies_round_trip() {
        let taken = Reply::Taken(vec![Taken {
            id: "r-1".into(),
            file: Err(Problem::TooLarge { size: 3 }),
            previously_claimed: false,
        }]);
        let put = Reply::Put(vec![
            ("a".into(), Ok(Put::Delivered)),
            ("b".into(), Err("disk full".into())),
        ]);
        for reply in [taken, put, Reply::Error("no".into())] {
            let line = reply_line(7, &reply);
            assert_eq!(parse_reply(line.as_bytes()), Some((7, reply)));
        }
        assert_eq!(parse_reply(br#"{"seq":1}"#), None);
        let hostile = br#"{"seq":1,"taken":[{"id":"../x","claimed":false,"file":""}]}"#;
        assert_eq!(parse_reply(hostile), Some((1, Reply::Taken(Vec::new()))));
    }
}
