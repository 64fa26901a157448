//! Runners that exec through a local program: this machine's `sh` ([`LocalRunner`]), or
//! any exec prefix such as `docker exec -i BOX` or `ssh -T HOST` ([`CommandRunner`]).

use tokio::process::Command;

use super::exec::{self, sh_command, with_cwd};
use super::{
    BoxFuture, Capabilities, Exec, ExecOutput, ExecStream, Process, Runner, RunnerError, Spawn,
};

/// Runs scripts with this machine's `sh`: no isolation at all (development and tests).
#[derive(Debug, Clone, Default)]
pub struct LocalRunner;

impl Runner for LocalRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            let command = local_sh(&exec.script, exec.cwd.as_deref(), exec.env);
            exec::run(command, exec.stdin, exec.timeout).await
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            exec::open_stream(local_sh(&spawn.script, spawn.cwd.as_deref(), spawn.env))
        })
    }

    fn spawn(&self, spawn: Spawn) -> BoxFuture<'_, Result<Box<dyn Process>, RunnerError>> {
        Box::pin(async move {
            let command = local_sh(&spawn.script, spawn.cwd.as_deref(), spawn.env);
            exec::spawn_inherited(command, None)
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: true,
            shared_fs: true,
            upload: false,
        }
    }
}

/// This machine's `sh -c SCRIPT` in `cwd`, with a cleared environment plus `env`.
fn local_sh(script: &str, cwd: Option<&std::path::Path>, env: Vec<(String, String)>) -> Command {
    let mut command = sh_command(&[], with_cwd(script, cwd));
    command.envs(env);
    command
}

/// Runs scripts through an exec prefix: `<prefix...> sh -c <script>`.
///
/// The local environment does not cross a remote exec, so [`Exec::env`] travels in the
/// exec's stdin, ahead of the caller's stdin: a line with a count, then `export` lines
/// that a small prelude reads and evaluates. Values never appear in an argument list.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    prefix: Vec<String>,
    /// Host variables removed from the prefix program's environment.
    hidden: Vec<String>,
}

/// The whole environment a script starts with on the far side of a prefix (then the
/// variables of [`Exec::env`] are added from stdin).
const FAR_ENV: [&str; 2] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
];

/// The prelude that reads the environment block from stdin, then runs the script.
///
/// The block is a line with a count, then that many one-line `export` statements. The
/// shell's own `read` takes it: it never reads past a newline, even from a pipe, so the
/// script's stdin starts exactly after the block (busybox `head -c` would over-read).
const ENV_PRELUDE: &str = "__pcb_nl='\n'\n\
IFS= read -r __pcb_n || exit 125\n\
case $__pcb_n in ''|*[!0-9]*) exit 125;; esac\n\
while [ \"$__pcb_n\" -gt 0 ]; do\n\
  IFS= read -r __pcb_line || exit 125\n\
  eval \"$__pcb_line\"\n\
  __pcb_n=$((__pcb_n - 1))\n\
done\n\
unset __pcb_n __pcb_line __pcb_nl\n";

impl CommandRunner {
    /// A runner for `prefix` (e.g. `["docker", "exec", "-i", "box"]`).
    pub fn new(prefix: Vec<String>) -> Result<Self, RunnerError> {
        if prefix.is_empty() {
            return Err(RunnerError::Invalid("the exec prefix is empty".into()));
        }
        Ok(Self {
            prefix,
            hidden: Vec::new(),
        })
    }

    /// Splits a prefix written as one string, honouring single and double quotes.
    pub fn parse(prefix: &str) -> Result<Self, RunnerError> {
        Self::new(split_words(prefix)?)
    }

    /// `<prefix...> env -i PATH=.. LANG=.. sh -c <script>`. The prefix is a host tool
    /// (`kubectl` needs KUBECONFIG, `ssh` SSH_AUTH_SOCK, `docker` DOCKER_HOST), so it keeps
    /// this process's environment; the environment is cleared on the far side, inside the
    /// sandbox, so no host variable reaches the script.
    fn command(&self, script: String) -> Command {
        let mut command = Command::new(&self.prefix[0]);
        command
            .args(&self.prefix[1..])
            .args(["env", "-i"])
            .args(FAR_ENV)
            .args(["sh", "-c"])
            .arg(script);
        for name in &self.hidden {
            command.env_remove(name);
        }
        command
    }

    /// Keeps the host variable `name` from the prefix program too (the bridge hides the
    /// variable holding the real key: no provider's client needs it).
    pub fn hide_env(mut self, name: &str) -> Self {
        self.hidden.push(name.to_owned());
        self
    }
}

impl Runner for CommandRunner {
    fn exec(&self, exec: Exec) -> BoxFuture<'_, Result<ExecOutput, RunnerError>> {
        Box::pin(async move {
            let script = format!(
                "{ENV_PRELUDE}{}",
                with_cwd(&exec.script, exec.cwd.as_deref())
            );
            let mut stdin = env_block(&exec.env)?;
            stdin.extend_from_slice(&exec.stdin);
            exec::run(self.command(script), stdin, exec.timeout).await
        })
    }

    fn stream(&self, spawn: Spawn) -> BoxFuture<'_, Result<ExecStream, RunnerError>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt as _;
            let script = format!(
                "{ENV_PRELUDE}{}",
                with_cwd(&spawn.script, spawn.cwd.as_deref())
            );
            let block = env_block(&spawn.env)?;
            let mut stream = exec::open_stream(self.command(script))?;
            // The environment block goes first; the stream's own bytes follow it.
            stream.stdin.write_all(&block).await?;
            Ok(stream)
        })
    }

    fn spawn(&self, spawn: Spawn) -> BoxFuture<'_, Result<Box<dyn Process>, RunnerError>> {
        Box::pin(async move {
            // The environment travels in stdin: the block, then the agent's stdin ends.
            let script = format!(
                "{ENV_PRELUDE}{}",
                with_cwd(&spawn.script, spawn.cwd.as_deref())
            );
            let block = env_block(&spawn.env)?;
            exec::spawn_inherited(self.command(script), Some(block))
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: true,
            shared_fs: false,
            upload: false,
        }
    }
}

/// `<count>\n` + one `export NAME='value'` line per variable; a newline inside a value
/// is spelled `'"$__pcb_nl"'` so every statement stays on one line.
fn env_block(env: &[(String, String)]) -> Result<Vec<u8>, RunnerError> {
    let mut lines = Vec::with_capacity(env.len());
    for (name, value) in env {
        if !is_env_name(name) {
            return Err(RunnerError::Invalid(format!(
                "invalid environment variable name {name:?}"
            )));
        }
        let quoted = crate::shell::quote(value).replace('\n', "'\"$__pcb_nl\"'");
        lines.push(format!("export {name}={quoted}\n"));
    }
    Ok(format!("{}\n{}", lines.len(), lines.concat()).into_bytes())
}

fn is_env_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn split_words(text: &str) -> Result<Vec<String>, RunnerError> {
    let mut words = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(word) = current.take() {
                    words.push(word);
                }
            }
            '\'' | '"' => {
                let word = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                        None => {
                            return Err(RunnerError::Invalid(format!(
                                "unbalanced {c} in exec prefix {text:?}"
                            )))
                        }
                    }
                }
            }
            other => current.get_or_insert_with(String::new).push(other),
        }
    }
    words.extend(current);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_like_a_shell() {
        assert_eq!(
            split_words("docker exec -i 'my box'  \"x y\"").unwrap(),
            ["docker", "exec", "-i", "my box", "x y"]
        );
        assert!(split_words("ssh 'oops").is_err());
    }

    #[test]
    fn env_block_is_one_line_per_variable() {
        let block = env_block(&[("A".into(), "it's".into()), ("B".into(), "x\ny".into())]);
        assert_eq!(
            String::from_utf8(block.unwrap()).unwrap(),
            "2\nexport A='it'\\''s'\nexport B='x'\"$__pcb_nl\"'y'\n"
        );
        assert!(env_block(&[("A B".into(), "x".into())]).is_err());
    }
}
