//! Runners: the runner contract, written once and run over every runner (this machine's
//! `sh`, an exec prefix, real OpenSSH into a namespace sandbox, `podman exec -i` into a
//! container, a stand-in `ssh` that joins its words as ssh does, the namespace sandbox, a
//! delayed channel, the in-memory runner with no process at all, and E2B's envd through
//! the fake that E2B's SDK vouches for in `e2b.rs`), then what is particular to each: exec
//! prefixes (environment through stdin, never argv), timeouts, and the namespace sandbox
//! (the isolation proof).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_e2b;

use common::cmdlines_containing;
use common::podman::PodmanBox;
use common::ssh::SshSandbox;
use std::time::Duration;

use std::sync::Arc;

use bridge_host::runner::memory::Invocation;
use bridge_host::runner::{
    BwrapSandbox, CommandRunner, DelayRunner, Exec, LocalRunner, MemoryRunner, Mounts, Runner,
    RunnerError, Signal, Spawn, MAX_ERROR_OUTPUT, MAX_OUTPUT,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The contract. Its scripts are constant (inputs in env and stdin, as the bridge's are), so
// the in-memory sandbox can have a program for each.

/// Prints `$GREETING|`, then its stdin; says `oops` on stderr; exits 7.
const ECHO: &str = "printf '%s|' \"$GREETING\"; cat; echo oops >&2; exit 7";
/// Copies stdin to stdout.
const CAT: &str = "cat";
/// Prints its environment.
const ENV: &str = "env";
/// Runs far past any bound.
const SLEEP: &str = "sleep 30";
/// Says `ready` on stderr, then echoes its stdin line by line.
const ECHO_LINES: &str = "echo ready >&2; while IFS= read -r line; do echo \"got $line\"; done";
/// Exits 3 if its stdin is empty (as an agent's must be), else 4.
const AGENT: &str = "[ -z \"$(cat)\" ] && exit 3 || exit 4";

/// The in-memory sandbox, with a program for each contract script.
fn memory() -> MemoryRunner {
    MemoryRunner::new()
        .with_program(ECHO, |mut run| async move {
            let greeting = run.env.get("GREETING").cloned().unwrap_or_default();
            let mut input = Vec::new();
            let _ = run.stdin.read_to_end(&mut input).await;
            let _ = run
                .stdout
                .write_all(format!("{greeting}|").as_bytes())
                .await;
            let _ = run.stdout.write_all(&input).await;
            let _ = run.stderr.write_all(b"oops\n").await;
            7
        })
        .with_program(CAT, |mut run| async move {
            let _ = tokio::io::copy(&mut run.stdin, &mut run.stdout).await;
            0
        })
        .with_program(ENV, |mut run| async move {
            for (name, value) in &run.env {
                let _ = run
                    .stdout
                    .write_all(format!("{name}={value}\n").as_bytes())
                    .await;
            }
            0
        })
        .with_program(SLEEP, |_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            0
        })
        .with_program(ECHO_LINES, echo_lines)
        .with_program(AGENT, |mut run| async move {
            let mut input = Vec::new();
            let _ = run.stdin.read_to_end(&mut input).await;
            if input.is_empty() {
                3
            } else {
                4
            }
        })
}

async fn echo_lines(mut run: Invocation) -> i32 {
    let _ = run.stderr.write_all(b"ready\n").await;
    let mut lines = BufReader::new(run.stdin).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = run
            .stdout
            .write_all(format!("got {line}\n").as_bytes())
            .await;
    }
    0
}

/// A runner under test and the sandbox to destroy afterwards, if any.
struct Under {
    runner: Arc<dyn Runner>,
    sandbox: Option<Arc<BwrapSandbox>>,
    e2b: Option<(bridge_host::runner::E2bSandbox, fake_e2b::FakeE2b)>,
    _ssh: Option<SshSandbox>,
    _podman: Option<PodmanBox>,
    _dir: tempfile::TempDir,
}

/// What ssh does with the words after the host, without ssh: joins them with spaces and
/// has a shell split them again. A program by that name, so the runner treats it as ssh.
const JOINING_SSH: &str = "#!/bin/sh\nexec sh -c \"$*\"\n";

fn joining_ssh(dir: &std::path::Path) -> CommandRunner {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("ssh");
    std::fs::write(&path, JOINING_SSH).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    CommandRunner::new(vec![path.to_string_lossy().into_owned()]).unwrap()
}

impl Under {
    async fn new(name: &str) -> Under {
        let dir = tempfile::tempdir().unwrap();
        let (mut sandbox, mut ssh, mut podman) = (None, None, None);
        let mut e2b = None;
        let runner: Arc<dyn Runner> = match name {
            "e2b" => {
                let fake = fake_e2b::FakeE2b::start().await;
                let made = bridge_host::runner::E2bSandbox::create(&fake.config(), "base")
                    .await
                    .unwrap();
                let runner = made.runner();
                e2b = Some((made, fake));
                runner
            }
            "local" => Arc::new(LocalRunner),
            "prefixed" => Arc::new(CommandRunner::parse("env --").unwrap()),
            "joined" => Arc::new(joining_ssh(dir.path())),
            "ssh" => {
                let made = SshSandbox::start();
                let runner = made.runner();
                ssh = Some(made);
                Arc::new(runner)
            }
            "podman" => {
                let made = PodmanBox::start();
                let runner = made.runner();
                podman = Some(made);
                Arc::new(runner)
            }
            "delayed" => Arc::new(DelayRunner::new(
                Arc::new(LocalRunner),
                Duration::from_millis(20),
            )),
            "memory" => Arc::new(memory()),
            _ => {
                let made = Arc::new(BwrapSandbox::create(dir.path()).await.unwrap());
                sandbox = Some(made.clone());
                made
            }
        };
        Under {
            runner,
            sandbox,
            e2b,
            _ssh: ssh,
            _podman: podman,
            _dir: dir,
        }
    }

    async fn finish(self) {
        if let Some(sandbox) = self.sandbox {
            sandbox.destroy().await;
        }
        if let Some((sandbox, _fake)) = self.e2b {
            sandbox.close().await.unwrap();
        }
    }
}

/// A long-running `script` with no environment.
fn script(script: &str) -> Spawn {
    Spawn {
        script: script.into(),
        env: Vec::new(),
        cwd: None,
    }
}

async fn exec_passes_stdin_env_and_exit_code(runner: &dyn Runner) {
    let out = runner
        .exec(
            Exec::new(ECHO, T)
                .stdin(b"from stdin".to_vec())
                .env("GREETING", "hello"),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "hello|from stdin");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.code, Some(7));
    assert!(!out.timed_out);
}

async fn a_process_gets_only_what_is_passed(runner: &dyn Runner) {
    std::env::set_var("HOST_ONLY_SECRET_TOKEN", "must-not-cross");
    let out = runner
        .exec(Exec::new(ENV, T).env("PASSED_VAR", "passed-1"))
        .await
        .unwrap();
    let env = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(!env.contains("must-not-cross"), "{env}");
    assert!(
        env.contains("PASSED_VAR=passed-1"),
        "{env} {}",
        out.stderr_text()
    );
    // Nothing of the far side's own either (an ssh session's HOME, USER, SSH_CONNECTION):
    // what a shell sets for itself at most.
    for name in env.lines().filter_map(|l| l.split('=').next()) {
        assert!(
            ["PATH", "LANG", "PASSED_VAR", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
            "unexpected variable {name} in {env}"
        );
    }
}

async fn an_exec_past_its_bound_is_timed_out(runner: &dyn Runner) {
    let out = runner
        .exec(Exec::new(SLEEP, Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(out.timed_out, "{}", out.stderr_text());
    assert_eq!(out.code, None);
    assert!(!out.success());
}

async fn large_stdin_and_stdout_do_not_deadlock(runner: &dyn Runner) {
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let out = runner
        .exec(Exec::new(CAT, T).stdin(data.clone()))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_text());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
}

async fn a_stream_carries_messages_both_ways_then_ends(runner: &dyn Runner) {
    let mut stream = runner.stream(script(ECHO_LINES)).await.unwrap();
    let mut stderr = BufReader::new(stream.stderr);
    let mut said = String::new();
    stderr.read_line(&mut said).await.unwrap();
    assert_eq!(said, "ready\n");
    let mut stdout = BufReader::new(stream.stdout).lines();
    for n in 0..3 {
        stream
            .stdin
            .write_all(format!("m{n}\n").as_bytes())
            .await
            .unwrap();
        stream.stdin.flush().await.unwrap();
        let line = tokio::time::timeout(T, stdout.next_line()).await.unwrap();
        assert_eq!(line.unwrap().unwrap(), format!("got m{n}"));
    }
    stream.stdin.shutdown().await.unwrap();
    drop(stream.stdin);
    let status = tokio::time::timeout(T, stream.process.wait())
        .await
        .unwrap();
    assert!(status.unwrap().success());
}

async fn a_killed_stream_ends_unsuccessfully(runner: &dyn Runner) {
    let mut stream = runner.stream(script(SLEEP)).await.unwrap();
    stream.process.signal(Signal::Kill).unwrap();
    let status = tokio::time::timeout(T, stream.process.wait())
        .await
        .expect("a killed process ends")
        .unwrap();
    assert!(!status.success(), "{status:?}");
}

async fn a_spawned_agent_gets_an_empty_stdin_and_its_status_comes_back(runner: &dyn Runner) {
    let mut agent = runner.spawn(script(AGENT)).await.unwrap();
    let status = tokio::time::timeout(T, agent.wait())
        .await
        .expect("an agent reading stdin sees its end")
        .unwrap();
    assert_eq!(status.code, Some(3));
}

/// Runs one contract scenario over every runner, one test each.
macro_rules! contract {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            async fn on(name: &str) {
                let under = Under::new(name).await;
                assert!(under.runner.capabilities().streaming);
                super::$scenario(under.runner.as_ref()).await;
                under.finish().await;
            }

            runners!(local, prefixed, joined, ssh, podman, sandboxed, delayed, memory, e2b);
        }
    };
}

/// One test per runner, named after it.
macro_rules! runners {
    ($($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                on(stringify!($name)).await;
            }
        )*
    };
}

contract!(exec_passes_stdin_env_and_exit_code);
contract!(a_process_gets_only_what_is_passed);
contract!(an_exec_past_its_bound_is_timed_out);
contract!(large_stdin_and_stdout_do_not_deadlock);
contract!(a_stream_carries_messages_both_ways_then_ends);
contract!(a_killed_stream_ends_unsuccessfully);
contract!(a_spawned_agent_gets_an_empty_stdin_and_its_status_comes_back);

#[tokio::test]
async fn the_memory_sandbox_has_only_its_programs() {
    let out = memory().exec(Exec::new("rm -rf /", T)).await.unwrap();
    assert_eq!(out.code, Some(bridge_host::runner::memory::NOT_FOUND));
    assert!(
        out.stderr_text().contains("no program"),
        "{}",
        out.stderr_text()
    );
}

// ---------------------------------------------------------------------------------------
// What is particular to each runner.

#[tokio::test]
async fn the_local_runner_runs_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = LocalRunner
        .exec(Exec::new("pwd", T).cwd(dir.path()))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        dir.path().canonicalize().unwrap().display().to_string()
    );
}

#[tokio::test]
async fn local_processes_start_with_a_path_and_nothing_else_of_the_hosts() {
    std::env::set_var("HOST_ONLY_SECRET_TOKEN", "must-not-cross");
    for runner in [
        &LocalRunner as &dyn Runner,
        &CommandRunner::parse("env --").unwrap(),
    ] {
        let out = runner.exec(Exec::new(ENV, T)).await.unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(env.contains("PATH="), "{runner:?}: {env}");
        assert!(!env.contains("must-not-cross"), "{runner:?}: {env}");
    }
}

#[tokio::test]
async fn a_timed_out_exec_is_killed_with_what_it_started() {
    let out = LocalRunner
        .exec(Exec::new(
            "sleep 30 & echo $!; wait",
            Duration::from_millis(500),
        ))
        .await
        .unwrap();
    assert!(out.timed_out, "{}", out.stderr_text());
    assert_eq!(out.code, None);
    assert!(!out.success());
    // Output read before the kill is kept: here, the background sleep's pid.
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    wait_gone(pid).await;
}

#[tokio::test]
async fn an_exec_prefix_gets_its_environment_through_stdin_not_argv() {
    let runner = CommandRunner::parse("env --").unwrap();
    let secret = "prefix-secret-value-4242";
    let exec = runner.exec(
        Exec::new("sleep 1; echo \"$SECRET_X\"; cat", T)
            .env("SECRET_X", secret)
            .stdin(b"rest of stdin".to_vec()),
    );
    let scan = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cmdlines_containing(secret)
    };
    let (out, leaks) = tokio::join!(exec, scan);
    let out = out.unwrap();
    assert!(leaks.is_empty(), "secret in argv of {leaks:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{secret}\nrest of stdin")
    );
}

#[tokio::test]
async fn the_sandbox_cannot_reach_the_hosts_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!("if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo reached; else echo refused; fi");
    // Control: from the host the server is reachable.
    let here = LocalRunner
        .exec(Exec::new(format!("bash -c '{probe}'"), T))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&here.stdout).trim(), "reached");
    let dir = tempfile::tempdir().unwrap();
    let sandbox = BwrapSandbox::create(dir.path()).await.unwrap();
    let inside = sandbox
        .exec(Exec::new(format!("bash -c '{probe}'"), T))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout).trim(),
        "refused",
        "{}",
        inside.stderr_text()
    );
    sandbox.destroy().await;
}

#[tokio::test]
async fn the_sandbox_has_private_files_and_destroy_kills_detached_processes() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = BwrapSandbox::create(dir.path()).await.unwrap();
    let out = sandbox
        .exec(
            Exec::new(
                "echo inside > secret.txt; setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
                T,
            )
            .cwd(dir.path()),
        )
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_text());
    let pids = members(&sandbox);
    assert!(
        pids.len() >= 2,
        "the holder and the detached sleep: {pids:?}"
    );
    assert!(
        !dir.path().join("secret.txt").exists(),
        "the host sees the sandbox's files"
    );
    let seen = sandbox
        .exec(Exec::new("cat secret.txt", T).cwd(dir.path()))
        .await
        .unwrap();
    assert_eq!(seen.stdout, b"inside\n");
    sandbox.destroy().await;
    for pid in pids {
        wait_gone(pid).await;
    }
}

/// Host pids of the processes in the sandbox's PID namespace.
fn members(sandbox: &BwrapSandbox) -> Vec<u32> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let ours = ns(&sandbox.holder_pid().to_string());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ours.is_some() && ns(&pid.to_string()) == ours)
        .collect()
}

async fn wait_gone(pid: u32) {
    for _ in 0..200 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its reaper.
        if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("process {pid} survived destroy");
}

#[tokio::test]
async fn a_flood_of_output_costs_the_host_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = BwrapSandbox::create(dir.path()).await.unwrap();
    let flood = "head -c 80000000 /dev/zero; head -c 3000000 /dev/zero >&2";
    for runner in [&LocalRunner as &dyn Runner, &sandbox] {
        let out = runner.exec(Exec::new(flood, T)).await.unwrap();
        assert_eq!(out.stdout.len(), MAX_OUTPUT, "{runner:?}");
        assert_eq!(out.stderr.len(), MAX_ERROR_OUTPUT, "{runner:?}");
    }
    sandbox.destroy().await;
}

#[tokio::test]
async fn an_exec_prefix_keeps_the_hosts_environment_and_the_script_gets_none_of_it() {
    // A host tool that refuses to work without its host variable (as kubectl without
    // KUBECONFIG), and reports whether a hidden one reached it.
    std::env::set_var("PCB_TEST_TOOL_CONFIG", "host-config-1");
    std::env::set_var("PCB_TEST_HIDDEN", "hidden-1");
    let tool = r#"[ "$PCB_TEST_TOOL_CONFIG" = host-config-1 ] || { echo "no tool config" >&2; exit 42; }
echo "hidden=${PCB_TEST_HIDDEN:-unset}" >&2
exec "$@""#;
    let runner = CommandRunner::new(vec!["sh".into(), "-c".into(), tool.into(), "tool".into()])
        .unwrap()
        .hide_env("PCB_TEST_HIDDEN");
    let out = runner
        .exec(Exec::new("env", T).env("PASSED_VAR", "passed-1"))
        .await
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.success(), "{env} {}", out.stderr_text());
    assert_eq!(out.stderr_text().trim(), "hidden=unset");
    assert!(env.contains("PASSED_VAR=passed-1"), "{env}");
    assert!(
        !env.contains("PCB_TEST_"),
        "a host variable reached the script: {env}"
    );
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in names {
        assert!(
            ["PATH", "LANG", "PASSED_VAR", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
            "unexpected variable {name} in {env}"
        );
    }
}

#[tokio::test]
async fn an_exec_prefix_keeps_odd_values_and_binary_stdin_intact() {
    let runner = CommandRunner::new(vec!["env".into(), "--".into()]).unwrap();
    let odd = "it's \"two\"\nlines $(echo not run) `x` \\ end";
    let stdin: Vec<u8> = (0..=255u8).chain(b"\nlast line".iter().copied()).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = runner
        .exec(
            Exec::new("printf '%s' \"$ODD\" > odd.txt; cat; cat odd.txt", T)
                .env("ODD", odd)
                .env("EMPTY", "")
                .stdin(stdin.clone())
                .cwd(dir.path()),
        )
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_text());
    let mut expected = stdin;
    expected.extend_from_slice(odd.as_bytes());
    assert_eq!(out.stdout, expected);
}

#[tokio::test]
async fn a_server_inside_the_sandbox_is_reachable_only_from_inside() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // The test binary is a host file: the sandbox sees it only when it is bound in.
    let mounts = Mounts {
        read_only: vec![exe.parent().unwrap().to_path_buf()],
        ..Mounts::default()
    };
    let sandbox = BwrapSandbox::create_with(dir.path(), &mounts)
        .await
        .unwrap();
    // The test binary itself serves as the in-sandbox server (see `helper_listener`).
    let script = r#""$EXE" helper_listener --exact --nocapture > server.out 2>&1 &
i=0
until grep -q '^PORT=' server.out 2>/dev/null || [ "$i" -ge 200 ]; do sleep 0.05; i=$((i + 1)); done
port=$(sed -n 's/^PORT=//p' server.out)
echo "port $port"
if bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then echo reached; else echo refused; fi
wait"#;
    let out = sandbox
        .exec(
            Exec::new(script, T)
                .env("EXE", exe.to_string_lossy())
                .env(LISTENER_VAR, "1")
                .cwd(dir.path()),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.success(), "{text} {}", out.stderr_text());
    let mut lines = text.lines();
    let port: u16 = lines
        .next()
        .and_then(|l| l.strip_prefix("port "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port: {text} {}", out.stderr_text()));
    assert_eq!(lines.next(), Some("reached"), "{text}");
    // The same port on the host's loopback is someone else's (almost surely nobody's).
    let from_host = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(
        from_host.is_err(),
        "the sandbox's server is visible on the host"
    );
    sandbox.destroy().await;
}

const LISTENER_VAR: &str = "RUNNERS_TEST_LISTENER";

/// Not a test on its own: a TCP server for the sandbox test, active only when the
/// sandbox starts this binary with `RUNNERS_TEST_LISTENER=1`. Accepts one connection,
/// giving up after a bounded wait.
#[test]
fn helper_listener() {
    if std::env::var(LISTENER_VAR).as_deref() != Ok("1") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    println!("PORT={}", listener.local_addr().unwrap().port());
    for _ in 0..400 {
        if listener.accept().is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test]
async fn a_destroyed_sandbox_refuses_execs() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = BwrapSandbox::create(dir.path()).await.unwrap();
    let holder = sandbox.holder_pid();
    assert_eq!(sandbox.workdir(), dir.path());
    sandbox.destroy().await;
    wait_gone(holder).await;
    let err = sandbox.exec(Exec::new("true", T)).await.unwrap_err();
    assert!(
        matches!(err, RunnerError::SandboxGone(_)),
        "unexpected error {err}"
    );
}
