//! The whole host side in a real network-isolated sandbox: deploy the gateway binary,
//! make agent calls from inside with curl, and check what the upstream test double saw,
//! where secrets went, and what stopping leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bridge_host::deploy::{Bridge, BridgeConfig, BridgeHandle};
use bridge_host::proxy::{Secret, Upstream};
use bridge_host::runner::{BwrapSandbox, Exec, ExecOutput, Runner};
use bridge_host::transport::TransportKind;
use common::*;

const T: Duration = Duration::from_secs(30);

struct Setup {
    recorder: Recorder,
    sandbox: Arc<BwrapSandbox>,
    bridge: Option<BridgeHandle>,
    _dir: tempfile::TempDir,
}

/// The default deployment: the stream transport.
async fn setup() -> Setup {
    setup_with(TransportKind::default()).await
}

async fn setup_with(transport: TransportKind) -> Setup {
    setup_configured(transport, |_| {}).await
}

async fn setup_configured(
    transport: TransportKind,
    adjust: impl FnOnce(&mut BridgeConfig),
) -> Setup {
    let (recorder, dir) = recorder_and_dir().await;
    let sandbox = Arc::new(BwrapSandbox::create(dir.path()).await.unwrap());
    let upstream = Upstream::new(
        &recorder.url,
        Secret::new(REAL_KEY.into()),
        Some(RUN_ID.into()),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut config = BridgeConfig::new(gateway_bin(), dir.path().to_path_buf(), upstream);
    config.worker.drain_timeout = Duration::from_millis(300);
    config.stop_grace = Duration::from_secs(5);
    config.transport = transport;
    adjust(&mut config);
    let bridge = Bridge::start(sandbox.clone(), config).await.unwrap();
    Setup {
        recorder,
        sandbox,
        bridge: Some(bridge),
        _dir: dir,
    }
}

impl Setup {
    fn bridge(&self) -> &BridgeHandle {
        self.bridge.as_ref().unwrap()
    }

    /// Runs `script` in the sandbox as the agent: only the agent environment is given.
    async fn agent(&self, script: &str) -> ExecOutput {
        let mut exec = Exec::new(script, T).cwd(self.sandbox.workdir());
        exec.env = self.bridge().agent_env();
        let out = self.sandbox.exec(exec).await.unwrap();
        assert!(
            out.success(),
            "agent script failed: {}\n{}",
            out.stderr_text(),
            String::from_utf8_lossy(&out.stdout)
        );
        out
    }

    async fn teardown(mut self) {
        if let Some(bridge) = self.bridge.take() {
            bridge.stop().await.unwrap();
        }
        self.sandbox.destroy().await;
    }
}

const CURL: &str = r#"call() { curl -sS -o body.out -D headers.out -w '%{http_code}' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$@"; }"#;

#[tokio::test]
async fn agent_calls_reach_the_upstream_with_the_real_credential_only() {
    let s = setup().await;
    let script = format!(
        r#"{CURL}
call "$PAPERCLIP_API_URL/api/agents/me" -H 'X-Custom: nope'; echo
call -X POST "$PAPERCLIP_API_URL/api/issues/i1/comments" -H 'Content-Type: application/json' -d '{{"body":"hi"}}'; echo
grep -i '^etag:' headers.out; grep -i '^location:' headers.out
call "$PAPERCLIP_API_URL/api/attachments/bin/content"; echo
sha256sum body.out | cut -d ' ' -f 1
call "$PAPERCLIP_API_URL/api/companies"; echo
"#
    );
    let out = s.agent(&script).await;
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines[0], "200");
    assert_eq!(lines[1], "201");
    assert_eq!(lines[2].to_ascii_lowercase(), "etag: \"c-1\"");
    assert_eq!(
        lines[3].to_ascii_lowercase(),
        "location: /api/issues/i1/comments/c-1"
    );
    assert_eq!(lines[4], "200");
    assert_eq!(
        lines[5],
        sha256_hex(&binary_blob()),
        "binary download byte-exact"
    );
    assert_eq!(lines[6], "403");
    let token = bridge_token(&s);
    let seen = s.recorder.seen();
    assert_eq!(seen.len(), 3, "the denied call never reached the upstream");
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {REAL_KEY}").as_str())
        );
        assert_eq!(request.header("x-paperclip-run-id"), Some(RUN_ID));
        assert!(request.header("x-custom").is_none());
        assert!(request
            .header("user-agent")
            .is_none_or(|ua| !ua.contains("curl")));
        assert!(
            request.headers.iter().all(|(_, v)| !v.contains(&token)),
            "bridge token leaked upstream"
        );
    }
    s.teardown().await;
}

/// One allowed and one denied call through a deployment with `transport`.
async fn serves_the_same_path(transport: TransportKind) {
    let s = setup_with(transport).await;
    let out = s
        .agent(&format!("{CURL}\ncall -X POST \"$PAPERCLIP_API_URL/api/issues/i1/comments\" -H 'Content-Type: application/json' -d '{{}}'; echo; call \"$PAPERCLIP_API_URL/api/companies\""))
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "201\n403");
    assert_eq!(s.recorder.count("POST", "/api/issues/i1/comments"), 1);
    s.teardown().await;
}

#[tokio::test]
async fn the_posix_transport_serves_the_same_path() {
    serves_the_same_path(TransportKind::Posix).await;
}

#[tokio::test]
async fn the_oneshot_transport_serves_the_same_path() {
    serves_the_same_path(TransportKind::OneShot).await;
}

#[tokio::test]
async fn the_streaming_transport_needs_one_exec_for_many_requests() {
    let s = setup().await;
    let calls = "for i in 1 2 3 4 5 6 7 8 9 10; do call -X POST \"$PAPERCLIP_API_URL/api/issues/i1/comments\" -H 'Content-Type: application/json' -d '{}'; echo; done";
    let out = s.agent(&format!("{CURL}\n{calls}")).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("201").count(),
        10
    );
    assert_eq!(s.recorder.count("POST", "/api/issues/i1/comments"), 10);
    assert_eq!(
        s.bridge().worker().exec_count(),
        1,
        "one session carried every request"
    );
    s.teardown().await;
}

#[tokio::test]
async fn binary_uploads_arrive_byte_exact() {
    let s = setup().await;
    let blob = binary_blob();
    let hex: String = blob.iter().map(|b| format!("\\{:03o}", b)).collect();
    let script = format!(
        r#"{CURL}
printf '{hex}' > blob.bin
call -X POST "$PAPERCLIP_API_URL/api/companies/c1/issues/i1/attachments" -F 'file=@blob.bin;type=application/octet-stream'; echo
"#
    );
    let out = s.agent(&script).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "201");
    let upload = s
        .recorder
        .seen()
        .into_iter()
        .find(|r| r.path.ends_with("/attachments"))
        .unwrap();
    assert!(upload
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data"));
    assert!(
        upload
            .body
            .windows(blob.len())
            .any(|w| w == blob.as_slice()),
        "the multipart body holds the exact bytes"
    );
    s.teardown().await;
}

#[tokio::test]
async fn the_real_key_never_enters_the_sandbox() {
    let s = setup().await;
    s.agent(&format!(
        "{CURL}\ncall \"$PAPERCLIP_API_URL/api/agents/me\""
    ))
    .await;
    let token = bridge_token(&s);
    // No argument list on the machine holds the real key or the bridge token.
    for needle in [REAL_KEY, token.as_str()] {
        let leaks = cmdlines_containing(needle);
        assert!(leaks.is_empty(), "in argv: {leaks:?}");
    }
    // No file in the sandbox holds the key (looked at from inside). The key travels to
    // grep in the environment, so this check itself puts it in no argv.
    let mut exec = Exec::new(
        "grep -rlF -e \"$NEEDLE\" . || true; env | grep -v '^NEEDLE=' | grep -cF -e \"$NEEDLE\" || true",
        T,
    )
    .cwd(s.sandbox.workdir())
    .env("NEEDLE", REAL_KEY);
    exec.env.extend(s.bridge().agent_env());
    let grep = s.sandbox.exec(exec).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&grep.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
    // No process in the sandbox (the gateway among them) has it in its environment.
    let pids = sandbox_pids(&s.sandbox);
    assert!(!pids.is_empty());
    for pid in pids {
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
            assert!(
                !String::from_utf8_lossy(&environ).contains(REAL_KEY),
                "pid {pid}"
            );
        }
    }
    s.teardown().await;
}

#[tokio::test]
async fn stopping_answers_waiting_callers_503_and_leaves_no_queue() {
    let mut s = setup().await;
    let held = s.recorder.hold.clone().write_owned().await;
    // Three callers, in the background inside the sandbox, each writing its status.
    let start = format!(
        "{CURL}\nfor i in 1 2 3; do (curl -sS -o /dev/null -w '%{{http_code}}' -H \"Authorization: Bearer $PAPERCLIP_API_KEY\" \"$PAPERCLIP_API_URL/api/issues/q$i\" > status.$i 2>&1 &) ; done"
    );
    s.agent(&start).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.recorder.seen().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no request reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queue = s.bridge().queue_dir().to_path_buf();
    let bridge = s.bridge.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), bridge.stop())
        .await
        .expect("stop is bounded")
        .unwrap();
    drop(held);
    // The callers write their status when answered: wait for all three (bounded).
    let check = format!("i=0; while [ \"$(cat status.1 status.2 status.3 2>/dev/null | wc -c)\" -lt 9 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done; cat status.1 status.2 status.3; echo; [ -e '{}' ] && echo queue-left || echo queue-gone", queue.display());
    let out = s
        .sandbox
        .exec(Exec::new(check, T).cwd(s.sandbox.workdir()))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.trim(), "503503503\nqueue-gone", "{text}");
    s.teardown().await;
}

fn bridge_token(s: &Setup) -> String {
    s.bridge()
        .agent_env()
        .into_iter()
        .find(|(k, _)| k == "PAPERCLIP_API_KEY")
        .unwrap()
        .1
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pids in the sandbox's network namespace.
fn sandbox_pids(sandbox: &BwrapSandbox) -> Vec<String> {
    let ns = std::fs::read_link(format!("/proc/{}/ns/net", sandbox.holder_pid())).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l == ns))
        .collect()
}

#[tokio::test]
async fn a_gateway_that_dies_at_start_is_reported_with_its_log() {
    let (recorder, dir) = recorder_and_dir().await;
    let fake = dir.path().join("fake-gateway");
    std::fs::write(&fake, "#!/bin/sh\necho 'cannot listen: boom' >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sandbox_dir = dir.path().join("sandbox");
    let sandbox = Arc::new(BwrapSandbox::create(&sandbox_dir).await.unwrap());
    let upstream = upstream_to(&recorder.url, Duration::from_secs(5));
    let mut config = BridgeConfig::new(fake, sandbox_dir, upstream);
    config.ready_timeout = Duration::from_secs(20);
    let started = std::time::Instant::now();
    let err = Bridge::start(sandbox.clone(), config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("boom"), "{err}");
    assert!(err.contains("exited before it was ready"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it waited for the ready time-out instead"
    );
    sandbox.destroy().await;
}

/// Runs `script` in the sandbox's work directory (not as the agent).
async fn in_sandbox(s: &Setup, script: &str) -> String {
    let exec = Exec::new(script, T)
        .cwd(s.sandbox.workdir())
        .env("Q", s.bridge().queue_dir().to_string_lossy());
    let out = s.sandbox.exec(exec).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + bound;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One call in the background that writes its status (000: no answer) and then `done`.
const HELD_CALL: &str = r#"(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/issues/held" > held.status 2>/dev/null; echo done >> held.status) &"#;

#[tokio::test]
async fn a_gateway_killed_with_sigkill_is_restarted_and_calls_work_again() {
    let s = setup_configured(TransportKind::default(), |c| {
        c.restart.check_interval = Duration::from_millis(100);
    })
    .await;
    let one = format!("{CURL}\ncall \"$PAPERCLIP_API_URL/api/agents/me\"");
    assert_eq!(String::from_utf8_lossy(&s.agent(&one).await.stdout), "200");
    // A caller waits for the upstream when the gateway is killed.
    let held = s.recorder.hold.clone().write_owned().await;
    s.agent(HELD_CALL).await;
    let recorder = s.recorder.clone();
    eventually("the held call reached the upstream", T, || {
        recorder.seen().len() >= 2
    })
    .await;
    let old = in_sandbox(&s, "cat \"$Q/server.pid\"").await;
    in_sandbox(&s, "kill -KILL \"$(cat \"$Q/server.pid\")\"").await;
    eventually("the host restarted the gateway", T, || {
        s.bridge().restart_count() == 1
    })
    .await;
    // The waiting caller got an answer: its connection dropped (curl prints 000).
    let status = in_sandbox(&s, "i=0; while ! grep -q done held.status 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done; cat held.status").await;
    assert_eq!(status, "000done", "{status}");
    drop(held);
    let new = in_sandbox(&s, "cat \"$Q/server.pid\"").await;
    assert_ne!(old, new, "a new gateway runs");
    let again =
        format!("{CURL}\nfor i in 1 2 3; do call \"$PAPERCLIP_API_URL/api/agents/me\"; echo; done");
    let out = s.agent(&again).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200\n200\n200");
    assert_eq!(s.bridge().restart_count(), 1);
    s.teardown().await;
}

#[tokio::test]
async fn a_gateway_that_keeps_crashing_ends_the_run_with_its_log() {
    let (recorder, dir) = recorder_and_dir().await;
    // Says it is ready, then dies: every start succeeds and every gateway crashes.
    let fake = dir.path().join("crashing-gateway");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake gateway: crashing on purpose' >&2\nprintf '{\"pid\":%s,\"host\":\"127.0.0.1\",\"port\":9,\"baseUrl\":\"http://127.0.0.1:9\",\"startedAt\":\"2026-01-01T00:00:00.000Z\"}\\n' $$ > \"$PAPERCLIP_BRIDGE_QUEUE_DIR/ready.json\"\nsleep 0.2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sandbox_dir = dir.path().join("sandbox");
    let sandbox = Arc::new(BwrapSandbox::create(&sandbox_dir).await.unwrap());
    let upstream = upstream_to(&recorder.url, T);
    let mut config = BridgeConfig::new(fake, sandbox_dir, upstream);
    // Not the session transport: the fake would be run as the session too.
    config.transport = TransportKind::Posix;
    config.restart.check_interval = Duration::from_millis(100);
    config.restart.max_restarts = 3;
    config.restart.backoff_start = Duration::from_millis(50);
    config.restart.backoff_cap = Duration::from_millis(200);
    let bridge = Bridge::start(sandbox.clone(), config).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), bridge.failed())
        .await
        .expect("the run ends within the bound")
        .to_string();
    assert!(err.contains("kept crashing"), "{err}");
    assert!(err.contains("3 restarts"), "{err}");
    assert!(
        err.contains("fake gateway: crashing on purpose"),
        "the log is in it: {err}"
    );
    assert_eq!(bridge.restart_count(), 3);
    bridge.stop().await.unwrap();
    sandbox.destroy().await;
}
