//! A network-isolated sandbox made with unprivileged Linux namespaces.
//! (Being written; see the helper task.)

/// A namespace sandbox.
#[derive(Debug)]
pub struct NetnsSandbox;
