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
/// Most prefixes (`docker exec -i BOX`, `kubectl exec -i POD --`) pass the words after
/// them on as argv. `ssh` does not: it joins them with spaces into one line that the
/// remote user's shell splits again, so a script with spaces, quotes or newlines would
/// arrive in pieces. For such prefixes the words go as one line quoted for POSIX `sh`
/// ([`CommandRunner::joins_words`]; automatic when the prefix's program is `ssh`).
///
/// The local environment does not cross a remote exec, so [`Exec::env`] travels in the
/// exec's stdin, ahead of the caller's stdin: a line with a count, then `export` lines
/// that a small prelude reads and evaluates. Values never appear in an argument list.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    prefix: Vec<String>,
    /// Host variables removed from the prefix program's environment.
    hidden: Vec<String>,
    /// The far side runs the words after the prefix as one shell command line (ssh).
    joined: bool,
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
            joined: is_ssh(&prefix[0]),
            prefix,
            hidden: Vec::new(),
        })
    }

    /// Splits a prefix written as one string, honouring single and double quotes.
    pub fn parse(prefix: &str) -> Result<Self, RunnerError> {
        Self::new(split_words(prefix)?)
    }

    /// The program the prefix starts on this machine (found in this process's PATH).
    pub fn program(&self) -> &str {
        &self.prefix[0]
    }

    /// `<prefix...> env -i PATH=.. LANG=.. sh -c <script>`. The prefix is a host tool
    /// (`kubectl` needs KUBECONFIG, `ssh` SSH_AUTH_SOCK, `docker` DOCKER_HOST), so it keeps
    /// this process's environment; the environment is cleared on the far side, inside the
    /// sandbox, so no host variable reaches the script.
    fn command(&self, script: String) -> Command {
        let far: Vec<String> = ["env", "-i"]
            .into_iter()
            .chain(FAR_ENV)
            .chain(["sh", "-c"])
            .map(String::from)
            .chain([script])
            .collect();
        let mut command = Command::new(&self.prefix[0]);
        command.args(&self.prefix[1..]);
        if self.joined {
            command.arg(crate::shell::join(&far));
        } else {
            command.args(far);
        }
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

    /// Whether the far side runs the words after the prefix as one shell command line,
    /// as `ssh` does (then they are sent quoted, as one word). Set automatically for a
    /// prefix whose program is `ssh`; set it for wrappers of ssh (`gcloud compute ssh
    /// VM --`), clear it for a program called `ssh` that passes argv on.
    pub fn joins_words(mut self, joined: bool) -> Self {
        self.joined = joined;
        self
    }
}

/// The prefix's program is OpenSSH's client (by name, with or without a directory).
fn is_ssh(program: &str) -> bool {
    std::path::Path::new(program)
        .file_name()
        .is_some_and(|name| name == "ssh")
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
    fn ssh_gets_the_far_command_as_one_quoted_word() {
        let words = |runner: &CommandRunner| -> Vec<String> {
            let command = runner.command("echo 'a b'\nexit 3".into());
            let args = command.as_std().get_args();
            args.map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let ssh = CommandRunner::parse("/usr/bin/ssh -T host").unwrap();
        let sent = words(&ssh);
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sent[2].starts_with("env -i PATH="), "{sent:?}");
        assert!(
            sent[2].ends_with(" sh -c 'echo '\\''a b'\\''\nexit 3'"),
            "{sent:?}"
        );
        let docker = CommandRunner::parse("docker exec -i box").unwrap();
        assert_eq!(words(&docker).last().unwrap(), "echo 'a b'\nexit 3");
        assert_eq!(words(&ssh.joins_words(false)).len(), 9);
        assert!(!is_ssh("sshpass") && is_ssh("ssh") && !is_ssh("/ssh/docker"));
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
