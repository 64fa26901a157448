//! `ready.json`: tells whoever started the gateway where it listens.

use std::net::SocketAddr;
use std::time::SystemTime;

use bridge_protocol::wire::{self, ReadyFile};

use crate::queue::Queue;

/// Writes `ready.json` atomically (only call it once the socket listens).
pub(crate) fn write(queue: &Queue, addr: SocketAddr) -> std::io::Result<ReadyFile> {
    let host = addr.ip().to_string();
    let ready = ReadyFile {
        pid: std::process::id(),
        base_url: format!("http://{}", addr),
        host,
        port: addr.port(),
        started_at: bridge_protocol::time::iso8601_at(SystemTime::now()),
    };
    Queue::write_atomic(&queue.layout().ready_file(), &wire::to_line(&ready))?;
    Ok(ready)
}
