//! The queue over exec with POSIX sh and coreutils only.
//! (Being written; see the helper task.)

/// POSIX shell transport.
#[derive(Debug)]
pub struct PosixTransport;
