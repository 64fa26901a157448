//! Making (or reaching) the sandbox the `--sandbox` flags describe, and taking it down.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bridge_host::runner::{BwrapSandbox, CommandRunner, LocalRunner, Mounts, Runner};

use crate::args::{SandboxArgs, SandboxKind};

/// A sandbox for the length of one command.
#[derive(Debug)]
pub struct Sandbox {
    pub runner: Arc<dyn Runner>,
    /// The bridge's directory inside the sandbox.
    pub workdir: PathBuf,
    bwrap: Option<Arc<BwrapSandbox>>,
    /// A host directory we made and must remove.
    host_dir: Option<PathBuf>,
}

impl Sandbox {
    pub async fn open(args: &SandboxArgs) -> Result<Self> {
        let binds = !args.ro_bind.is_empty() || !args.bind.is_empty();
        if binds && args.sandbox != SandboxKind::Bwrap {
            bail!("--ro-bind and --bind apply to --sandbox bwrap only (the other sandboxes show the agent what they show it)");
        }
        match args.sandbox {
            SandboxKind::Bwrap => {
                let (workdir, made) = workdir_or_temp(args.workdir.clone())?;
                let mounts = Mounts {
                    read_only: args.ro_bind.clone(),
                    writable: args.bind.clone(),
                };
                let sandbox = BwrapSandbox::create_with(&workdir, &mounts)
                    .await
                    .context("creating the local sandbox (bubblewrap)")?;
                let sandbox = Arc::new(sandbox);
                Ok(Self {
                    runner: sandbox.clone(),
                    workdir,
                    bwrap: Some(sandbox),
                    host_dir: made,
                })
            }
            SandboxKind::Local => {
                let (workdir, made) = workdir_or_temp(args.workdir.clone())?;
                Ok(Self {
                    runner: Arc::new(LocalRunner),
                    workdir,
                    bwrap: None,
                    host_dir: made,
                })
            }
            SandboxKind::Exec => {
                let Some(prefix) = &args.exec else {
                    bail!("--sandbox exec needs --exec PREFIX (e.g. --exec 'docker exec -i BOX')");
                };
                let runner = CommandRunner::parse(prefix)
                    .with_context(|| format!("--exec {prefix:?}"))?
                    // Paperclip's variable for the real key: no provider's client needs it.
                    .hide_env("PAPERCLIP_API_KEY");
                Ok(Self {
                    runner: Arc::new(runner),
                    workdir: args
                        .workdir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("/tmp/paperclip-bridge")),
                    bwrap: None,
                    host_dir: None,
                })
            }
        }
    }

    /// Destroys what `open` made (the sandbox and our temporary directory).
    pub async fn close(self) {
        if let Some(sandbox) = self.bwrap {
            sandbox.destroy().await;
        }
        if let Some(dir) = self.host_dir {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the sandbox directory");
            }
        }
    }
}

/// The given directory, or a new private one under the system temp dir.
fn workdir_or_temp(given: Option<PathBuf>) -> Result<(PathBuf, Option<PathBuf>)> {
    if let Some(dir) = given {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating --workdir {}", dir.display()))?;
        return Ok((dir, None));
    }
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("paperclip-bridge-{name}"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    set_private(&dir)?;
    Ok((dir.clone(), Some(dir)))
}

fn set_private(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}
