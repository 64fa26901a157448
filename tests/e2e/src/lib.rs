//! The end-to-end suite lives in `tests/`; run it with `cargo xtask e2e`.
