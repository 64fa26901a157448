//! `session`: the queue operations over one long-lived exec. The host writes commands on
//! the session's stdin and reads replies on its stdout, so once the session is open a
//! request costs no exec at all, only two messages on a stream. The wire is
//! [`bridge_protocol::ops`]'s session ([`HELLO`], [`ops::CommandLine`], [`ReplyLine`]).
//!
//! Commands run concurrently (a take may wait while puts go through), so replies come in
//! any order; `seq` pairs them. The session ends when its stdin does (the host is gone).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bridge_protocol::layout::QueueLayout;
use bridge_protocol::ops::{self, Command, Reply, ReplyLine, TakeOptions, HELLO};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::RequestWatch;

/// The line for reply `seq`.
fn reply_line(seq: u64, reply: Reply) -> String {
    ops::to_line(&ReplyLine { seq, reply })
}

/// Serves commands from `input` until it ends, writing replies to `output`.
pub async fn serve<R, W>(layout: QueueLayout, input: R, output: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Checked once here for a clear start-up error; every put batch checks again.
    if let Err(e) = super::Putter::open(&layout) {
        return Err(io::Error::new(
            e.kind(),
            format!("no queue at {}: {e}", layout.root().display()),
        ));
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
        match ops::parse_command(line.as_bytes()) {
            (seq, Ok(Command::Take(opts))) => {
                let (cancel, cancelled) = oneshot::channel();
                cancels.insert(seq, cancel);
                takes.spawn(take(seq, opts, watch.clone(), cancelled, replies.clone()));
            }
            // Puts are a few file operations each: done in line, in arrival order.
            (seq, Ok(Command::Put(items))) => {
                let results = super::put_all(&layout, items);
                let _ = replies.send(reply_line(seq, Reply::Put(results)));
            }
            (_, Ok(Command::Cancel(take))) => {
                if let Some(cancel) = cancels.remove(&take) {
                    let _ = cancel.send(());
                }
            }
            (seq, Err(why)) => {
                let _ = replies.send(reply_line(seq, Reply::Error(why)));
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
    let _ = replies.send(reply_line(seq, reply));
    seq
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
