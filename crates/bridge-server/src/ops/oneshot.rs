//! The one-shot subcommands' bodies (`take`, `put`): one exec each, lines of
//! [`bridge_protocol::ops`] on stdout (and, for `put`, on stdin).

use std::io;

use bridge_protocol::layout::QueueLayout;
use bridge_protocol::ops::{self, PutItem, PutResult, TakeOptions};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

use super::take_waiting;

/// Waits (bounded) for requests, claims them and prints one [`ops::Taken`] line each.
pub async fn take<W: AsyncWrite + Unpin>(
    layout: &QueueLayout,
    opts: &TakeOptions,
    mut output: W,
) -> io::Result<()> {
    let taken = take_waiting(layout, opts).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e}", layout.requests_dir().display()),
        )
    })?;
    for item in &taken {
        output
            .write_all(format!("{}\n", ops::to_line(item)).as_bytes())
            .await?;
    }
    output.flush().await
}

/// Reads [`PutItem`] lines until `input` ends, puts each and prints its [`PutResult`]
/// (`-` as the id of a line that could not be read).
pub async fn put<R, W>(layout: &QueueLayout, input: R, mut output: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Both directories checked and held for the whole exec; one lock budget for its puts.
    let putter = super::Putter::open(layout).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no queue at {}: {e}", layout.root().display()),
        )
    })?;
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let result = match ops::from_line::<PutItem>(line.as_bytes()) {
            Ok(item) => PutResult {
                result: putter.put(&item.id, &item.file).map_err(|e| e.to_string()),
                id: item.id,
            },
            Err(e) => PutResult {
                id: "-".into(),
                result: Err(e.to_string()),
            },
        };
        output
            .write_all(format!("{}\n", ops::to_line(&result)).as_bytes())
            .await?;
    }
    output.flush().await
}
