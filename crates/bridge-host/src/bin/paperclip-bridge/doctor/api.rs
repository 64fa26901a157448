//! The doctor's check of the API URL: does something answer HTTP there?

use std::time::Duration;

use super::{chain, Outcome};

/// How long the API may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET <url>/api/health` (Paperclip's health route): any answer below 500 counts.
pub async fn check(url: Option<&str>) -> Outcome {
    let Some(url) = url else {
        return Outcome::Skip("no --api-url (or PAPERCLIP_API_URL) given".into());
    };
    let health = format!("{}/api/health", url.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => return Outcome::fail(format!("no HTTP client: {}", chain(&e)), "report a bug"),
    };
    match client.get(&health).send().await {
        Ok(response) if response.status().is_server_error() => Outcome::fail(
            format!("GET {health} answered {}", response.status()),
            "the server answers but fails: look at its logs (Paperclip's, or a proxy's in front)",
        ),
        Ok(response) => Outcome::Ok(format!("GET {health} answered {}", response.status())),
        Err(e) if e.is_builder() => Outcome::fail(
            format!("{url:?} is not a URL: {}", chain(&e)),
            "pass the API's base URL, e.g. --api-url http://127.0.0.1:3100",
        ),
        Err(e) => Outcome::fail(
            format!("GET {health}: {}", chain(&e)),
            "start the API server, or correct --api-url (PAPERCLIP_API_URL): from this machine, \
             `curl URL/api/health` must get an answer",
        ),
    }
}
