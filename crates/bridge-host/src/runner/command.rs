//! Runners that exec through a local command: `sh` itself, or any exec prefix.
//! (Being written; see the helper task.)

/// Runs scripts with this machine's `sh`.
#[derive(Debug, Clone, Default)]
pub struct LocalRunner;

/// Runs scripts through an exec prefix such as `docker exec -i BOX`.
#[derive(Debug, Clone)]
pub struct CommandRunner;
