//! `paperclip-bridge policy show|check`: the policy as a file. `show` prints the effective
//! policy (Paperclip's defaults, or a file's) as TOML that loads back to itself; `check`
//! validates a file and says what is wrong on which line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bridge_host::policy::{HostPolicy, PolicyFileError};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the effective policy as TOML: the defaults, or FILE's policy.
    Show {
        /// A policy file (see docs/policy.md) [default: Paperclip's built-in policy].
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Check a policy file: exit 0 if it is valid, else 1 with what is wrong and where.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

pub fn policy(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Show { policy } => {
            let policy = match policy {
                Some(path) => HostPolicy::load(&path)
                    .with_context(|| format!("loading --policy {}", path.display()))?,
                None => HostPolicy::default(),
            };
            print!("{}", policy.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check { file } => match HostPolicy::load(&file) {
            Ok(policy) => {
                println!(
                    "{}: valid ({} routes, {} request headers, {} response headers, bodies up to {} bytes)",
                    file.display(),
                    policy.routes.rules().len(),
                    policy.request_headers.len(),
                    policy.response_headers.len(),
                    policy.max_body_bytes
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(PolicyFileError::Invalid { path, message }) => {
                eprintln!("{}: {message}", path.display());
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        },
    }
}
