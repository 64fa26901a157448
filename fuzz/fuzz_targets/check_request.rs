//! The host's request-file checker, fed what a hostile sandbox could write: it never
//! panics, and what it lets through can be sent exactly as checked.
#![no_main]

use bridge_host::policy::HostPolicy;
use bridge_host::worker::check;
use libfuzzer_sys::fuzz_target;

/// Built once: the default policy compiles the route allowlist, far slower than a check.
fn policy() -> &'static HostPolicy {
    static POLICY: std::sync::OnceLock<HostPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(HostPolicy::default)
}

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    // The id must match the file's own for anything to pass: take it from the input.
    let id = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "r1".to_owned());
    let Ok(checked) = check(&id, data, policy) else {
        return;
    };
    assert!(policy.routes.allows(&checked.method, &checked.path));
    assert!(checked.body.len() <= policy.max_body_bytes);
    reqwest::Method::from_bytes(checked.method.as_bytes()).expect("a sendable method");
    for (name, value) in &checked.headers {
        assert!(policy.request_headers.contains(name), "{name} is allowlisted");
        reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a sendable name");
        reqwest::header::HeaderValue::from_str(value).expect("a sendable value");
    }
    let target = format!("{}{}", checked.path, checked.query);
    let url = url::Url::parse(&format!("http://upstream.test{target}")).expect("parses");
    assert_eq!(url.path(), checked.path.as_str(), "sent path differs from checked");
    if checked.query.len() > 1 {
        assert_eq!(url.query(), Some(&checked.query[1..]), "sent query differs");
    }
});
