//! The host half of the bridge: the library an orchestrator links.
//!
//! - [`runner`]: how the host reaches a sandbox (exec), and the sandboxes we can make.
//! - [`transport`]: the queue over exec (or a shared directory), batched.
//! - [`worker`]: validates every queued request against the [`policy`], forwards it with
//!   the real credential ([`proxy`]) and writes the answer back.
//! - [`deploy`]: uploads and starts the gateway in a sandbox and runs the worker for it.
//! - [`metrics`]: what the worker does, as Prometheus metrics.

#![warn(missing_docs, unreachable_pub)]

pub mod audit;
pub mod deploy;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod runner;
pub mod shell;
pub mod transport;
pub mod worker;
