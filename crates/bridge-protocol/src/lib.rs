//! queue_v1: the contract between the in-sandbox gateway and the host worker.
//!
//! This crate is the boundary of the project. It holds the wire types, the body codec, the
//! queue layout, the environment contract and the policy data that both sides share, and it
//! does no I/O at all: callers hand it bytes, strings and clocks, and get values back.

#![warn(missing_docs, unreachable_pub)]

pub mod codec;
pub mod env;
pub mod layout;
pub mod ops;
pub mod path;
pub mod policy;
pub mod shown;
pub mod time;
pub mod token;
pub mod wire;

pub use codec::{BodyEncoding, CodecError};
pub use layout::QueueLayout;
pub use path::{canonicalize_path, CanonicalPath, PathRejection};
pub use policy::{is_safe_method, RouteAllowlist};
pub use shown::{shown, shown_error, Shown};
pub use wire::{ReadyFile, RequestFile, ResponseFile};

/// Name of the header that marks an answer whose upstream outcome is unknown.
pub const OUTCOME_HEADER: &str = "x-paperclip-bridge-outcome";
/// Value of [`OUTCOME_HEADER`] for an unknown outcome.
pub const OUTCOME_INDETERMINATE: &str = "indeterminate";

/// The JSON error body both sides answer with: `{"error": "..."}`.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::json!({ "error": message })
        .to_string()
        .into_bytes()
}

/// The JSON body of an indeterminate answer: the caller must not blindly retry.
pub fn indeterminate_body(message: &str) -> Vec<u8> {
    serde_json::json!({ "error": message, "outcome": OUTCOME_INDETERMINATE, "retryable": false })
        .to_string()
        .into_bytes()
}
