//! Deployment over a flaky exec channel: every step is safe to repeat (see `scripts.rs`),
//! so a step whose exec failed in the channel is tried again with a bounded, doubling
//! pause; a step whose script failed on its own terms is not (it would fail again).
//!
//! Channel failures: the runner could not carry the exec (spawn or pipe errors), it gave
//! no answer in time, the exec was killed, exited 255 (ssh's and many exec clients' code
//! for "the connection failed"), or the output made no sense (lost or cut short). A script
//! may also declare a failure transient with exit 75 (`EX_TEMPFAIL`).

use std::future::Future;
use std::time::Duration;

use bridge_protocol::{shown, shown_error};

use super::DeployError;
use crate::runner::{Exec, ExecOutput, Runner};

/// Attempts per deployment step, the first included, before deployment gives up.
pub const DEPLOY_ATTEMPTS: u32 = 6;
/// First pause between two attempts at a step; it doubles up to [`DEPLOY_BACKOFF_CAP`].
pub const DEPLOY_BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between two attempts at a step.
pub const DEPLOY_BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How long past an exec's own time-out the host still waits for the runner's answer: a
/// runner (or provider) that does not honour the time-out must not hang deployment.
const EXEC_GUARD_GRACE: Duration = Duration::from_secs(5);
/// Exit code of a deployment script that failed transiently (`EX_TEMPFAIL`).
const EXIT_TRANSIENT: i32 = 75;
/// Exit code of ssh and most exec clients when the channel, not the script, failed.
const EXIT_CHANNEL: i32 = 255;

/// How often and how patiently a deployment step is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per step, the first included (at least one is made).
    pub attempts: u32,
    /// First pause between attempts; doubles up to `backoff_cap`.
    pub backoff_start: Duration,
    /// Longest pause between attempts.
    pub backoff_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEPLOY_ATTEMPTS,
            backoff_start: DEPLOY_BACKOFF_START,
            backoff_cap: DEPLOY_BACKOFF_CAP,
        }
    }
}

/// How one attempt at a step failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The channel failed, or the script said "transient": worth another attempt.
    Channel(String),
    /// The step failed for real: another attempt would fail the same way.
    Fatal(DeployError),
}

/// Runs `attempt` until it succeeds, fails for real, or `policy.attempts` are used up.
pub(crate) async fn retried<T, F, Fut>(
    policy: &RetryPolicy,
    step: &'static str,
    mut attempt: F,
) -> Result<T, DeployError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let attempts = policy.attempts.max(1);
    let mut pause = policy.backoff_start;
    let mut last = String::new();
    for n in 1..=attempts {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Channel(why)) => {
                tracing::warn!(step, attempt = n, error = %why, "deployment step failed in the channel");
                last = why;
            }
        }
        if n < attempts {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(policy.backoff_cap);
        }
    }
    Err(DeployError::Exhausted {
        step,
        attempts,
        last,
    })
}

/// Runs one exec, bounded even if the runner ignores the time-out; success is exit 0.
pub(crate) async fn exec_once(
    runner: &dyn Runner,
    step: &'static str,
    exec: Exec,
) -> Result<ExecOutput, Failure> {
    let bound = exec.timeout + EXEC_GUARD_GRACE;
    let out = match tokio::time::timeout(bound, runner.exec(exec)).await {
        Err(_) => {
            let ms = bound.as_millis();
            return Err(Failure::Channel(format!(
                "no answer from the runner in {ms} ms"
            )));
        }
        Ok(Err(e)) if e.transient() => return Err(Failure::Channel(shown_error(&e).to_string())),
        Ok(Err(source)) => return Err(Failure::Fatal(DeployError::Runner { step, source })),
        Ok(Ok(out)) => out,
    };
    if out.success() {
        return Ok(out);
    }
    Err(classify(step, &out))
}

/// What an unsuccessful exec's result means: a channel failure to retry, or the script's
/// own (fatal).
pub(crate) fn classify(step: &'static str, out: &ExecOutput) -> Failure {
    let failure = script_failure(step, out);
    if channel_failed(out) {
        Failure::Channel(failure.to_string())
    } else {
        Failure::Fatal(failure)
    }
}

/// The exec, rather than the script, failed (or the script said it was transient).
fn channel_failed(out: &ExecOutput) -> bool {
    out.timed_out || matches!(out.code, None | Some(EXIT_CHANNEL) | Some(EXIT_TRANSIENT))
}

/// The error for a script that did not succeed; its stderr is the sandbox's word, so it
/// is bounded and escaped.
fn script_failure(step: &'static str, out: &ExecOutput) -> DeployError {
    DeployError::Script {
        step,
        code: out.code,
        timed_out: if out.timed_out { ", timed out" } else { "" },
        stderr: shown(&out.stderr_text()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: Option<i32>, timed_out: bool) -> ExecOutput {
        ExecOutput {
            code,
            timed_out,
            ..ExecOutput::default()
        }
    }

    #[test]
    fn channel_failures_are_told_from_script_failures() {
        assert!(channel_failed(&out(Some(255), false)));
        assert!(channel_failed(&out(Some(75), false)));
        assert!(channel_failed(&out(None, false)));
        assert!(channel_failed(&out(Some(0), true)));
        for own in [1, 2, 3, 4, 125] {
            assert!(!channel_failed(&out(Some(own), false)), "exit {own}");
        }
    }

    #[tokio::test]
    async fn retries_stop_at_the_bound_and_name_the_step() {
        let policy = RetryPolicy {
            attempts: 3,
            backoff_start: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(2),
        };
        let mut tries = 0;
        let result: Result<(), _> = retried(&policy, "testing", || {
            tries += 1;
            let n = tries;
            async move { Err(Failure::Channel(format!("drop {n}"))) }
        })
        .await;
        let err = result.unwrap_err().to_string();
        assert_eq!(tries, 3);
        assert!(
            err.contains("testing") && err.contains("3 attempts"),
            "{err}"
        );
        assert!(err.contains("drop 3"), "{err}");
    }

    #[tokio::test]
    async fn a_real_failure_is_not_retried() {
        let mut tries = 0;
        let result: Result<(), _> = retried(&RetryPolicy::default(), "testing", || {
            tries += 1;
            async { Err(Failure::Fatal(DeployError::NotSharedFs)) }
        })
        .await;
        assert!(matches!(result, Err(DeployError::NotSharedFs)));
        assert_eq!(tries, 1);
    }
}
