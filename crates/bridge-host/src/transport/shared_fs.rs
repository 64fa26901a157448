//! The queue through a directory the host sees directly.
//! (Being written; see the helper task.)

/// Shared-filesystem transport.
#[derive(Debug)]
pub struct SharedFsTransport;
