//! paperclip-bridge: the host CLI (being built).
fn main() {}
