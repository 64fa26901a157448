//! The gateway binary's queue-operation subcommands, run by the host through exec (the
//! lines are [`bridge_protocol::ops`]'s):
//!
//! - `take --queue-dir D [--wait-ms W] [--max-bytes B] [--envelope-bytes E] [--include-claimed]`
//!   waits (inotify) up to W ms for a request, claims the batch and prints it as NDJSON;
//! - `put --queue-dir D` reads NDJSON responses on stdin and writes each under the rules of
//!   [`crate::ops`], printing one result line per id;
//! - `session --queue-dir D` does both for as long as its stdin stays open, driven by
//!   commands on stdin ([`crate::ops::session`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bridge_protocol::codec::{envelope_limit, DEFAULT_MAX_BODY_BYTES};
use bridge_protocol::layout::QueueLayout;
use bridge_protocol::ops::TakeOptions;

use crate::ops;

/// Runs a queue-operation subcommand; `None` when `args` names none (serve as the gateway).
pub fn dispatch(args: &[String]) -> Option<ExitCode> {
    let (command, rest) = args.split_first()?;
    let result = match command.as_str() {
        "take" => take(rest),
        "put" => put(rest),
        "session" => session(rest),
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(why)) => {
            eprintln!("paperclip-bridge-server {command}: {why}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Io(why)) => {
            eprintln!("paperclip-bridge-server {command}: {why}");
            ExitCode::FAILURE
        }
    })
}

const USAGE: &str = "usage: paperclip-bridge-server take --queue-dir DIR [--wait-ms MS] [--max-bytes N] [--envelope-bytes N] [--include-claimed]
       paperclip-bridge-server put --queue-dir DIR   (NDJSON responses on stdin)
       paperclip-bridge-server session --queue-dir DIR   (take/put commands on stdin)
       paperclip-bridge-server                       (serve; configured by PAPERCLIP_BRIDGE_*)";

enum Failure {
    Usage(String),
    Io(String),
}

fn take(args: &[String]) -> Result<(), Failure> {
    let flags = Flags::parse(args, &["--include-claimed"])?;
    let layout = QueueLayout::new(flags.queue_dir()?);
    let opts = TakeOptions {
        wait: Duration::from_millis(flags.number("--wait-ms", 0)?),
        max_batch_bytes: flags.number("--max-bytes", 16 << 20)? as usize,
        envelope_limit: flags.number(
            "--envelope-bytes",
            envelope_limit(DEFAULT_MAX_BODY_BYTES) as u64,
        )? as usize,
        include_claimed: flags.has("--include-claimed"),
    };
    runtime()?
        .block_on(ops::oneshot::take(&layout, &opts, tokio::io::stdout()))
        .map_err(|e| Failure::Io(e.to_string()))
}

fn put(args: &[String]) -> Result<(), Failure> {
    let flags = Flags::parse(args, &[])?;
    let layout = QueueLayout::new(flags.queue_dir()?);
    runtime()?
        .block_on(ops::oneshot::put(
            &layout,
            tokio::io::stdin(),
            tokio::io::stdout(),
        ))
        .map_err(|e| Failure::Io(e.to_string()))
}

fn session(args: &[String]) -> Result<(), Failure> {
    let flags = Flags::parse(args, &[])?;
    let layout = QueueLayout::new(flags.queue_dir()?);
    let runtime = runtime()?;
    let served = runtime.block_on(ops::session::serve(
        layout,
        tokio::io::stdin(),
        tokio::io::stdout(),
    ));
    // A take may still be waiting on a blocking read of stdin's end: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served.map_err(|e| Failure::Io(e.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Io(e.to_string()))
}

/// `--name value` pairs and bare switches.
struct Flags {
    pairs: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], switches: &[&str]) -> Result<Self, Failure> {
        let mut flags = Flags {
            pairs: Vec::new(),
            switches: Vec::new(),
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if switches.contains(&arg.as_str()) {
                flags.switches.push(arg.clone());
            } else if arg.starts_with("--") {
                let value = rest
                    .next()
                    .ok_or_else(|| Failure::Usage(format!("{arg} needs a value")))?;
                flags.pairs.push((arg.clone(), value.clone()));
            } else {
                return Err(Failure::Usage(format!("unexpected argument {arg:?}")));
            }
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    fn queue_dir(&self) -> Result<PathBuf, Failure> {
        self.get("--queue-dir")
            .map(PathBuf::from)
            .ok_or_else(|| Failure::Usage("--queue-dir is required".into()))
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, Failure> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Failure::Usage(format!("{name} {v:?} is not a number"))),
        }
    }
}
