//! Making (or reaching) the sandbox the `--sandbox` flags describe, and taking it down.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bridge_host::proxy::Secret;
use bridge_host::runner::{
    BwrapSandbox, CommandRunner, E2bConfig, E2bSandbox, LocalRunner, Mounts, Runner,
};

use crate::args::{E2bArgs, SandboxArgs, SandboxKind};

/// A sandbox for the length of one command.
#[derive(Debug)]
pub struct Sandbox {
    pub runner: Arc<dyn Runner>,
    /// The bridge's directory inside the sandbox.
    pub workdir: PathBuf,
    /// What `--sandbox` said.
    pub kind: SandboxKind,
    bwrap: Option<Arc<BwrapSandbox>>,
    e2b: Option<E2bSandbox>,
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
                let created = BwrapSandbox::create_using(&args.bwrap, &workdir, &mounts).await;
                let sandbox = match created {
                    Ok(sandbox) => sandbox,
                    Err(e) => {
                        remove_made(made.as_deref());
                        return Err(e).context("creating the local sandbox (bubblewrap)");
                    }
                };
                let sandbox = Arc::new(sandbox);
                Ok(Self {
                    kind: args.sandbox,
                    runner: sandbox.clone(),
                    workdir,
                    bwrap: Some(sandbox),
                    e2b: None,
                    host_dir: made,
                })
            }
            SandboxKind::Local => {
                let (workdir, made) = workdir_or_temp(args.workdir.clone())?;
                Ok(Self {
                    kind: args.sandbox,
                    runner: Arc::new(LocalRunner),
                    workdir,
                    bwrap: None,
                    e2b: None,
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
                    kind: args.sandbox,
                    runner: Arc::new(runner),
                    workdir: args
                        .workdir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("/tmp/paperclip-bridge")),
                    bwrap: None,
                    e2b: None,
                    host_dir: None,
                })
            }
            SandboxKind::E2b => {
                let sandbox = open_e2b(&args.e2b).await?;
                Ok(Self {
                    kind: args.sandbox,
                    runner: sandbox.runner(),
                    workdir: args
                        .workdir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("/tmp/paperclip-bridge")),
                    bwrap: None,
                    e2b: Some(sandbox),
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
        if let Some(sandbox) = self.e2b {
            let id = sandbox.id().to_owned();
            if let Err(e) = sandbox.close().await {
                tracing::warn!(sandbox = %id, error = %e, "could not end the E2B sandbox (E2B ends it when its time to live runs out)");
            }
        }
        remove_made(self.host_dir.as_deref());
    }
}

/// Creates or attaches to the E2B sandbox the flags name.
async fn open_e2b(args: &E2bArgs) -> Result<E2bSandbox> {
    let mut config = E2bConfig::from_env();
    if let Some(file) = &args.e2b_api_key_file {
        let key = std::fs::read_to_string(file)
            .with_context(|| format!("reading --e2b-api-key-file {}", file.display()))?;
        config.api_key = Some(Secret::new(key.trim().to_owned()));
    }
    config.user = args.e2b_user.clone();
    let sandbox = match &args.e2b_sandbox {
        Some(id) => E2bSandbox::attach(&config, id)
            .await
            .with_context(|| format!("attaching to the E2B sandbox {id}"))?,
        None => E2bSandbox::create(&config, &args.e2b_template)
            .await
            .with_context(|| {
                format!(
                    "creating an E2B sandbox from template {}",
                    args.e2b_template
                )
            })?,
    };
    Ok(sandbox)
}

/// Removes the temporary directory `workdir_or_temp` made, if it made one.
fn remove_made(dir: Option<&std::path::Path>) {
    if let Some(dir) = dir {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the sandbox directory");
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
