//! `paperclip-bridge doctor-probe` (hidden): the doctor's agent inside the sandbox. It
//! makes one call through the gateway with the bridge token, then tries this machine's
//! loopback directly, and prints what happened as two lines (`call=`, `direct=`) that
//! the doctor reads; the curl script for sandboxes without this binary prints the same.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

/// The route the probe calls (the doctor's upstream answers it).
pub const ROUTE: &str = "/api/agents/me";

/// What the doctor's upstream puts in its answer to [`ROUTE`].
pub const MARK: &str = "demo-agent";

/// The same as a POSIX `sh` script with curl, for sandboxes without this binary; the
/// token goes to curl on stdin, never in an argument list. Inputs: the agent variables
/// and `DIRECT_URL`.
pub const CURL_SCRIPT: &str = r#"if ! command -v curl >/dev/null 2>&1; then echo nocurl; exit 0; fi
out=$(printf 'Authorization: Bearer %s\n' "$PAPERCLIP_API_KEY" | curl -sS --noproxy '*' -m 20 -H @- -w '\n%{http_code}' "$PAPERCLIP_API_URL/api/agents/me" 2>&1)
code=$(printf '%s\n' "$out" | tail -n 1)
case "$out" in *demo-agent*) echo "call=$code ok" ;; *) echo "call=$code wrong-body" ;; esac
if got=$(curl -sS --noproxy '*' -m 3 -o /dev/null -w '%{http_code}' "$DIRECT_URL" 2>&1); then
  echo "direct=answered $got"
else
  echo "direct=failed: $got"
fi
"#;

#[derive(Debug, Clone, Args)]
pub struct DoctorProbeArgs {
    /// A URL on the host's loopback that the sandbox must NOT reach.
    #[arg(long)]
    pub direct_url: String,
}

pub async fn probe(args: DoctorProbeArgs) -> Result<ExitCode> {
    let base = std::env::var("PAPERCLIP_API_URL").context("PAPERCLIP_API_URL is not set")?;
    let token = std::env::var("PAPERCLIP_API_KEY").context("PAPERCLIP_API_KEY is not set")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let call = client
        .get(format!("{base}{ROUTE}"))
        .bearer_auth(token)
        .send()
        .await;
    match call {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let good = if body.contains(MARK) {
                "ok"
            } else {
                "wrong-body"
            };
            println!("call={status} {good}");
        }
        Err(e) => println!("call=error {}", super::chain(&e)),
    }
    let direct = client
        .get(&args.direct_url)
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    match direct {
        Ok(response) => println!("direct=answered {}", response.status().as_u16()),
        Err(e) => println!("direct=failed: {}", super::chain(&e)),
    }
    Ok(ExitCode::SUCCESS)
}

/// What a probe printed.
#[derive(Debug, Default)]
pub struct Report {
    /// No curl in the sandbox: no call was made.
    pub no_curl: bool,
    /// The call's status and verdict (`200 ok`), or its error.
    pub call: Option<String>,
    /// What the direct attempt got.
    pub direct: Option<String>,
}

impl Report {
    pub fn parse(stdout: &str) -> Self {
        let mut report = Self::default();
        for line in stdout.lines() {
            if line == "nocurl" {
                report.no_curl = true;
            } else if let Some(call) = line.strip_prefix("call=") {
                report.call = Some(call.to_owned());
            } else if let Some(direct) = line.strip_prefix("direct=") {
                report.direct = Some(direct.to_owned());
            }
        }
        report
    }

    /// The call got 200 and the upstream's answer.
    pub fn answered(&self) -> bool {
        self.call.as_deref() == Some("200 ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_with_the_upstreams_answer_counts() {
        let good = Report::parse("call=200 ok\ndirect=failed: refused\n");
        assert!(good.answered());
        assert_eq!(good.direct.as_deref(), Some("failed: refused"));
        assert!(!Report::parse("call=200 wrong-body\n").answered());
        assert!(!Report::parse("call=401 ok\n").answered());
        assert!(Report::parse("nocurl\n").no_curl);
    }
}
