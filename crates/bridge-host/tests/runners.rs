//! Runners: local exec, exec prefixes (environment through stdin, never argv), timeouts,
//! and the network-isolated namespace sandbox (the isolation proof).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cmdlines_containing;
use std::time::Duration;

use bridge_host::runner::{
    CommandRunner, Exec, LocalRunner, NetnsSandbox, Runner, RunnerError, Spawn,
};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn local_runner_passes_stdin_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let out = LocalRunner
        .exec(
            Exec::new("pwd; echo \"$GREETING\"; cat; echo oops >&2; exit 7", T)
                .stdin(b"from stdin".to_vec())
                .env("GREETING", "hello")
                .cwd(dir.path()),
        )
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!(
            "{}\nhello\nfrom stdin",
            dir.path().canonicalize().unwrap().display()
        )
    );
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.code, Some(7));
    assert!(!out.timed_out);
}

#[tokio::test]
async fn sandbox_processes_get_only_what_is_passed() {
    std::env::set_var("HOST_ONLY_SECRET_TOKEN", "must-not-cross");
    let out = LocalRunner.exec(Exec::new("env", T)).await.unwrap();
    let env = String::from_utf8(out.stdout).unwrap();
    assert!(!env.contains("must-not-cross"), "{env}");
    assert!(env.contains("PATH="));
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
async fn large_stdin_and_stdout_do_not_deadlock() {
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let out = LocalRunner
        .exec(Exec::new("cat", T).stdin(data.clone()))
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
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
async fn the_netns_sandbox_cannot_reach_the_hosts_loopback() {
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
    let sandbox = NetnsSandbox::create(dir.path()).await.unwrap();
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
    let sandbox = NetnsSandbox::create(dir.path()).await.unwrap();
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
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        !dir.path().join("secret.txt").exists(),
        "the host sees the sandbox's files"
    );
    let seen = sandbox
        .exec(Exec::new("cat secret.txt", T).cwd(dir.path()))
        .await
        .unwrap();
    assert_eq!(seen.stdout, b"inside\n");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    sandbox.destroy().await;
    wait_gone(pid).await;
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
async fn streaming_spawn_passes_env_on_every_runner() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = NetnsSandbox::create(dir.path()).await.unwrap();
    let prefix = CommandRunner::parse("env --").unwrap();
    let runners: [&dyn Runner; 3] = [&LocalRunner, &prefix, &sandbox];
    for runner in runners {
        assert!(runner.capabilities().streaming);
        let child = runner
            .spawn(Spawn {
                script: "echo \"agent sees $STREAM_VAR\"".into(),
                env: vec![("STREAM_VAR".into(), "v-1".into())],
                cwd: None,
                inherit_output: false,
            })
            .unwrap();
        let out = tokio::time::timeout(T, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "agent sees v-1\n",
            "{runner:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sandbox.destroy().await;
}

#[tokio::test]
async fn a_server_inside_the_sandbox_is_reachable_only_from_inside() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = NetnsSandbox::create(dir.path()).await.unwrap();
    let exe = std::env::current_exe().unwrap();
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
    let sandbox = NetnsSandbox::create(dir.path()).await.unwrap();
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
