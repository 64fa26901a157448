//! The `paperclip-bridge` binary as Paperclip's process adapter runs it: settings from
//! Paperclip's environment, an allowlisted agent environment, the agent's exit status,
//! and SIGTERM. Output is printed on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The CLI with Paperclip's process-adapter environment (and host secrets beside it).
fn cli(recorder_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_API_URL", recorder_url)
        .env("PAPERCLIP_API_KEY", REAL_KEY)
        .env("PAPERCLIP_RUN_ID", RUN_ID)
        .env("PAPERCLIP_AGENT_ID", "agent-7")
        .env("PAPERCLIP_RUNTIME_TOOLS_TOKEN", "tools-jwt-secret")
        .env("SOME_SERVICE_SECRET", "svc-secret")
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_agent_sees_only_the_bridge_and_allowlisted_context() {
    let recorder = Recorder::start().await;
    let mut command = cli(&recorder.url);
    command.args(["run", "--sandbox", "bwrap", "--", "sh", "-c"]).arg(
        "env | sort; curl -sS -o /dev/null -w 'status=%{http_code}\\n' -H \"Authorization: Bearer $PAPERCLIP_API_KEY\" \"$PAPERCLIP_API_URL/api/agents/me\"",
    );
    let out = output(command).await;
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("status=200"), "{report}");
    assert!(
        stdout.contains(&format!("PAPERCLIP_RUN_ID={RUN_ID}")),
        "{report}"
    );
    assert!(stdout.contains("PAPERCLIP_AGENT_ID=agent-7"), "{report}");
    assert!(
        stdout.contains("PAPERCLIP_API_BRIDGE_MODE=queue_v1"),
        "{report}"
    );
    assert!(
        stdout.contains("PAPERCLIP_API_URL=http://127.0.0.1:"),
        "{report}"
    );
    for secret in [REAL_KEY, "tools-jwt-secret", "svc-secret"] {
        assert!(
            !stdout.contains(secret),
            "{secret} crossed into the sandbox:\n{report}"
        );
    }
    let seen = recorder.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {REAL_KEY}").as_str())
    );
    assert_eq!(seen[0].header("x-paperclip-run-id"), Some(RUN_ID));
}

#[tokio::test]
async fn the_agents_exit_status_is_ours() {
    let recorder = Recorder::start().await;
    let mut command = cli(&recorder.url);
    command.args([
        "run",
        "--sandbox",
        // The sandbox's old name still works.
        "netns",
        "--",
        "sh",
        "-c",
        "echo working; exit 3",
    ]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("working"));
}

#[tokio::test]
async fn the_latency_injector_works_as_an_exec_prefix() {
    let (recorder, dir) = recorder_and_dir().await;
    let prefix = format!(
        "'{}' delay-exec --delay-ms 40 --",
        env!("CARGO_BIN_EXE_paperclip-bridge")
    );
    let mut command = cli(&recorder.url);
    command
        .args(["run", "--sandbox", "exec", "--exec", &prefix, "--workdir"])
        .arg(dir.path())
        .args(["--transport", "stream", "--", "sh", "-c"])
        .arg("for i in 1 2 3; do curl -sS -o /dev/null -w '%{http_code}\\n' -H \"Authorization: Bearer $PAPERCLIP_API_KEY\" \"$PAPERCLIP_API_URL/api/agents/me\"; done; exit 3");
    let out = output(command).await;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("200").count(),
        3,
        "{report}"
    );
    assert_eq!(recorder.count("GET", "/api/agents/me"), 3);
}

#[tokio::test]
async fn missing_settings_name_the_variable() {
    let mut command = cli("http://127.0.0.1:1");
    command
        .env_remove("PAPERCLIP_API_URL")
        .args(["run", "--", "true"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PAPERCLIP_API_URL"),
        "{}",
        text(&out)
    );
    let mut command = cli("http://127.0.0.1:1");
    command
        .env_remove("PAPERCLIP_API_KEY")
        .args(["run", "--", "true"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PAPERCLIP_API_KEY"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn secret_looking_variables_need_the_explicit_flag() {
    let recorder = Recorder::start().await;
    let mut command = cli(&recorder.url);
    command.args(["run", "--pass-env", "SOME_SERVICE_SECRET", "--", "true"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--pass-secret-env"),
        "{}",
        text(&out)
    );
    let mut command = cli(&recorder.url);
    command.args([
        "run",
        "--pass-secret-env",
        "SOME_SERVICE_SECRET",
        "--",
        "sh",
        "-c",
        "echo \"got=$SOME_SERVICE_SECRET\"",
    ]);
    let out = output(command).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("got=svc-secret"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn sigterm_stops_the_agent_and_tears_down_within_a_bound() {
    let (recorder, dir) = recorder_and_dir().await;
    let mut command = cli(&recorder.url);
    command
        .args(["run", "--sandbox", "bwrap", "--workdir"])
        .arg(dir.path())
        .args(["--", "sh", "-c", "echo started; exec sleep 300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let started = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 8];
        use std::io::Read as _;
        stdout.read(&mut buf).unwrap()
    });
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("agent started")
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "paperclip-bridge did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "a cancelled run is not a success");
    let leftover = Command::new("pgrep")
        .args(["-f", "sleep 300"])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "the agent survived: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

#[tokio::test]
async fn the_shipped_cli_carries_no_benchmark() {
    for command in ["bench", "load"] {
        let mut cli = cli("http://127.0.0.1:9");
        cli.arg(command);
        let out = output(cli).await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"),
            "{}",
            text(&out)
        );
    }
    let mut help = cli("http://127.0.0.1:9");
    help.arg("--help");
    let out = output(help).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("delay-exec"), "{listed}");
    assert!(
        !listed.contains("bench") && !listed.contains("load "),
        "{listed}"
    );
}

#[tokio::test]
async fn the_demo_passes_in_the_default_sandbox() {
    // The README's main job: the scripted agent is this binary, bound into the sandbox.
    let mut command = Command::new(env!("CARGO_BIN_EXE_paperclip-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PAPERCLIP_BRIDGE_SERVER_BIN", gateway_bin())
        .env("RUST_LOG", "warn")
        .arg("demo")
        .stdin(Stdio::null());
    let out = output(command).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("demo passed"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn policy_show_prints_a_file_that_checks_and_check_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut show = cli("http://127.0.0.1:9");
    show.args(["policy", "show"]);
    let out = output(show).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("[[routes]]") && shown.contains("/api/agents/me"),
        "{shown}"
    );
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &shown).unwrap();
    let mut check = cli("http://127.0.0.1:9");
    check.args(["policy", "check"]).arg(&file);
    let out = output(check).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("valid (67 routes"),
        "{}",
        text(&out)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "extend_default_routes = true\nroutes = [\n  { method = \"GET\", path = \"^/api/ok$\" },\n  { method = \"GET\", path = \"^/api/(broken$\" },\n]\n",
    )
    .unwrap();
    let mut check = cli("http://127.0.0.1:9");
    check.args(["policy", "check"]).arg(&bad);
    let out = output(check).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4") && stderr.contains("regex"),
        "{}",
        text(&out)
    );
}

/// Reads lines from `pipe` until one satisfies `pick`, within a bound.
fn line_where(
    pipe: impl std::io::Read + Send + 'static,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(found) = pick(&line) {
                let _ = tx.send(found);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the line came")
}

#[tokio::test]
async fn metrics_count_decisions_and_execs_for_a_scraper() {
    let recorder = Recorder::start().await;
    let mut command = cli(&recorder.url);
    command
        .args(["up", "--sandbox", "local", "--transport", "stream"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let metrics = line_where(child.stderr.take().unwrap(), |l| {
        l.strip_prefix("paperclip-bridge: metrics at ")
            .map(str::to_owned)
    });
    let env = line_where(child.stdout.take().unwrap(), |l| {
        l.starts_with('{').then(|| l.to_owned())
    });
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let (url, token) = (
        env["PAPERCLIP_API_URL"].as_str().unwrap().to_owned(),
        env["PAPERCLIP_API_KEY"].as_str().unwrap().to_owned(),
    );
    let client = reqwest::Client::new();
    for path in ["/api/agents/me", "/api/companies"] {
        client
            .get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    // A caller has its answer a moment before the host hears that the answer was put:
    // scrape until the last delivery is counted (or the bound passes).
    let mut text = String::new();
    for _ in 0..100 {
        let scraped = client.get(&metrics).send().await.unwrap();
        assert!(scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        text = scraped.text().await.unwrap();
        if text
            .lines()
            .any(|l| l == "paperclip_bridge_requests_in_hand 0")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    for line in [
        r#"paperclip_bridge_requests_total{decision="forwarded",status="200"} 1"#,
        r#"paperclip_bridge_requests_total{decision="denied",status="403"} 1"#,
        "paperclip_bridge_request_seconds_count 2",
        "paperclip_bridge_upstream_seconds_count 1",
        "paperclip_bridge_requests_in_hand 0",
        "paperclip_bridge_execs_total 1",
        "paperclip_bridge_gateway_restarts_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}
