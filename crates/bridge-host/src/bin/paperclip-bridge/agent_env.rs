//! What crosses into the sandbox: an explicit allowlist of environment variables.
//!
//! The agent gets the bridge variables, a few non-secret Paperclip context values, and
//! whatever `--pass-env` names. Anything that looks like a secret is refused unless the
//! user says `--pass-secret-env`, whose name says what it does.

use anyhow::{bail, Result};

/// Non-secret context Paperclip sets for its process adapter; passed when present.
pub const CONTEXT_VARS: &[&str] = &[
    "PAPERCLIP_RUN_ID",
    "PAPERCLIP_AGENT_ID",
    "PAPERCLIP_COMPANY_ID",
];

/// Whether a variable name looks like it holds a secret.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["_TOKEN", "_KEY", "_SECRET", "_PASSWORD", "_JWT"]
        .iter()
        .any(|suffix| upper.ends_with(suffix))
        || [
            "TOKEN",
            "SECRET",
            "PASSWORD",
            "APIKEY",
            "API_KEY",
            "CREDENTIAL",
        ]
        .iter()
        .any(|word| upper.contains(word))
}

/// The agent's environment: `bridge` (gateway URL, bridge token, ...) plus the allowed
/// host variables. `lookup` reads the host environment.
pub fn agent_env(
    bridge: Vec<(String, String)>,
    pass: &[String],
    pass_secret: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>> {
    for name in pass {
        if looks_secret(name) {
            bail!(
                "--pass-env {name}: this looks like a secret and would enter the sandbox; \
                 if that is really wanted, use --pass-secret-env {name}"
            );
        }
    }
    let bridge_names: Vec<String> = bridge.iter().map(|(k, _)| k.clone()).collect();
    let mut env = bridge;
    let wanted = CONTEXT_VARS
        .iter()
        .map(|s| s.to_string())
        .chain(pass.iter().cloned())
        .chain(pass_secret.iter().cloned());
    for name in wanted {
        if bridge_names.contains(&name) {
            bail!("{name} is set by the bridge and cannot be passed from the host");
        }
        if env.iter().any(|(k, _)| *k == name) {
            continue;
        }
        if let Some(value) = lookup(&name) {
            env.push((name, value));
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Option<String> {
        match name {
            "PAPERCLIP_RUN_ID" => Some("run-1".into()),
            "PAPERCLIP_API_KEY" => Some("jwt".into()),
            "PAPERCLIP_RUNTIME_TOOLS_TOKEN" => Some("jwt2".into()),
            "LANG" => Some("C.UTF-8".into()),
            "GH_TOKEN" => Some("gh".into()),
            _ => None,
        }
    }

    fn bridge() -> Vec<(String, String)> {
        vec![("PAPERCLIP_API_KEY".into(), "bridge-token".into())]
    }

    #[test]
    fn only_the_allowlist_crosses() {
        let env = agent_env(bridge(), &["LANG".into()], &[], host).unwrap();
        assert_eq!(
            env,
            vec![
                ("PAPERCLIP_API_KEY".into(), "bridge-token".into()),
                ("PAPERCLIP_RUN_ID".into(), "run-1".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ]
        );
    }

    #[test]
    fn secrets_need_the_explicit_flag() {
        for name in [
            "GH_TOKEN",
            "PAPERCLIP_RUNTIME_TOOLS_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "DB_PASSWORD",
        ] {
            let err = agent_env(bridge(), &[name.into()], &[], host).unwrap_err();
            assert!(err.to_string().contains("--pass-secret-env"), "{err}");
        }
        let env = agent_env(bridge(), &[], &["GH_TOKEN".into()], host).unwrap();
        assert!(env.contains(&("GH_TOKEN".into(), "gh".into())));
    }

    #[test]
    fn the_real_key_cannot_replace_the_bridge_token() {
        let err = agent_env(bridge(), &[], &["PAPERCLIP_API_KEY".into()], host).unwrap_err();
        assert!(err.to_string().contains("set by the bridge"), "{err}");
    }
}
