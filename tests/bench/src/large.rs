//! `paperclip-bridge-bench load --large BYTES`: large bodies through the bridge, both ways,
//! checked byte by byte. An upload is a multipart attachment (the one route the gateway
//! takes a non-JSON body on); the upstream answers the sha256 of what reached it. A download
//! is a sized attachment whose bytes the loader knows ([`crate::upstream::pattern`]).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bridge_host::deploy::sha256_hex;

use crate::upstream::{pattern, SIZED_ATTACHMENT};

/// The multipart boundary; [`large`] checks that the payload does not contain it.
const BOUNDARY: &str = "paperclip-bridge-bench-boundary-7e3f";

pub async fn large(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    bytes: usize,
    repeat: usize,
) -> Result<ExitCode> {
    let body = multipart(&pattern(bytes));
    if body
        .windows(BOUNDARY.len())
        .filter(|w| *w == BOUNDARY.as_bytes())
        .count()
        != 2
    {
        bail!("the multipart boundary occurs in the payload; pick another");
    }
    let want_sha = sha256_hex(&body);
    let want_download = pattern(bytes);
    let (mut upload_s, mut download_s) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let started = Instant::now();
        upload(client, base, token, &body, &want_sha).await?;
        upload_s.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        download(client, base, token, &want_download).await?;
        download_s.push(started.elapsed().as_secs_f64());
    }
    let line = serde_json::json!({
        "bytes": bytes, "upload_s": upload_s, "download_s": download_s, "errors": 0,
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn multipart(payload: &[u8]) -> Vec<u8> {
    let head = format!(
        "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"large.bin\"\r\n\
         content-type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    [head.as_bytes(), payload, tail.as_bytes()].concat()
}

async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: &[u8],
    want_sha: &str,
) -> Result<()> {
    let answer = client
        .post(format!(
            "{base}/api/companies/bench/issues/large/attachments"
        ))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body.to_vec())
        .send()
        .await
        .context("uploading")?;
    let status = answer.status();
    let text = answer.text().await.context("reading the upload's answer")?;
    if status != 201 {
        bail!("the upload got {status}: {text}");
    }
    let seen: serde_json::Value = serde_json::from_str(&text).context("the upload's answer")?;
    if seen["sha256"] != want_sha || seen["bytes"] != body.len() {
        bail!(
            "the upload arrived changed: {} bytes, sha256 {} (sent {} bytes, {want_sha})",
            seen["bytes"],
            seen["sha256"],
            body.len()
        );
    }
    Ok(())
}

async fn download(client: &reqwest::Client, base: &str, token: &str, want: &[u8]) -> Result<()> {
    let url = format!(
        "{base}/api/attachments/{SIZED_ATTACHMENT}{}/content",
        want.len()
    );
    let answer = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .context("downloading")?;
    let status = answer.status();
    let got = answer.bytes().await.context("reading the download")?;
    if status != 200 {
        bail!(
            "the download got {status}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    if got.as_ref() != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        bail!(
            "the download arrived changed: {} bytes (want {}), first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
    Ok(())
}
