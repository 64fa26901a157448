//! The queue over exec with nothing but POSIX `sh` and coreutils in the sandbox, so it
//! serves any queue_v1 gateway, Paperclip's own included.
//!
//! `take` is one exec that long-polls inside the sandbox (a cheap wait loop) and prints
//! every pending request as a line `id claimed-before size base64`; `deliver` is one exec
//! whose stdin carries every ready response as `id base64`. Scripts are constant text;
//! inputs come in the environment.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bridge_protocol::layout::is_valid_id;

use super::{Delivery, Incoming, Outgoing, TakeOptions, TakeProblem, Transport, TransportError};
use crate::runner::{BoxFuture, Exec, ExecOutput, Runner};

/// One round of the in-sandbox wait loop.
const POLL_STEP: Duration = Duration::from_millis(20);

const TAKE: &str = r#"cd "$Q/requests" 2>/dev/null || { echo "no queue at $Q" >&2; exit 3; }
umask 077
valid() { case $1 in ''|*[!A-Za-z0-9_-]*) return 1;; esac; [ ${#1} -le 128 ]; }
pending() {
  for f in *.json; do
    [ -f "$f" ] || continue
    id=${f%.json}
    valid "$id" || continue
    [ -e "$id.answered" ] && continue
    [ "$INCLUDE_CLAIMED" != 1 ] && [ -e "$id.claimed" ] && continue
    return 0
  done
  return 1
}
i=0
while ! pending && [ "$i" -lt "$TRIES" ]; do sleep 0.02; i=$((i + 1)); done
for m in *.claimed *.answered; do
  [ -e "$m" ] || continue
  [ -e "${m%.*}.json" ] || rm -f "$m"
done
total=0; count=0
for f in $(ls -tr 2>/dev/null); do
  case $f in *.json) ;; *) continue;; esac
  id=${f%.json}
  valid "$id" && [ -f "$f" ] || continue
  [ -e "$id.answered" ] && continue
  prev=0
  if [ -e "$id.claimed" ]; then [ "$INCLUDE_CLAIMED" = 1 ] || continue; prev=1; fi
  size=$(wc -c < "$f" 2>/dev/null) || continue
  size=$((size + 0))
  [ "$count" -gt 0 ] && [ $((total + size)) -gt "$MAX_BATCH" ] && break
  : > "$id.claimed"
  count=$((count + 1))
  if [ "$size" -gt "$ENVELOPE" ]; then echo "$id $prev $size -"; continue; fi
  total=$((total + size))
  printf '%s %s %s ' "$id" "$prev" "$size"
  base64 < "$f" 2>/dev/null | tr -d '\n'
  echo
done
"#;

const DELIVER: &str = r#"cd "$Q" 2>/dev/null || { echo "no queue at $Q" >&2; exit 3; }
umask 077
while IFS=' ' read -r id data; do
  case $id in ''|*[!A-Za-z0-9_-]*) echo "$id invalid"; continue;; esac
  lock="responses/.$id.lock"
  n=0
  while ! mkdir "$lock" 2>/dev/null; do
    n=$((n + 1)); [ "$n" -ge 100 ] && break; sleep 0.01
  done
  if [ ! -f "requests/$id.json" ]; then
    echo "$id gone"
  elif printf '%s' "$data" | base64 -d > "responses/$id.json.tmp" 2>/dev/null \
      && mv -f "responses/$id.json.tmp" "responses/$id.json"; then
    if [ -f "requests/$id.json" ]; then
      : > "requests/$id.answered"; rm -f "requests/$id.claimed"; echo "$id delivered"
    elif [ -f "responses/$id.json" ]; then
      rm -f "responses/$id.json"; echo "$id gone"
    else
      echo "$id delivered"
    fi
  else
    rm -f "responses/$id.json.tmp"; echo "$id failed"
  fi
  rmdir "$lock" 2>/dev/null
done
"#;

/// The POSIX shell transport over any [`Runner`].
#[derive(Debug)]
pub struct PosixTransport {
    runner: Arc<dyn Runner>,
    queue_dir: PathBuf,
    exec_timeout: Duration,
    execs: AtomicU64,
}

impl PosixTransport {
    /// `exec_timeout` bounds each exec beyond its long-poll wait.
    pub fn new(runner: Arc<dyn Runner>, queue_dir: PathBuf, exec_timeout: Duration) -> Self {
        Self {
            runner,
            queue_dir,
            exec_timeout,
            execs: AtomicU64::new(0),
        }
    }

    async fn exec(&self, exec: Exec) -> Result<ExecOutput, TransportError> {
        self.execs.fetch_add(1, Ordering::Relaxed);
        let timeout = exec.timeout;
        let out = self.runner.exec(exec).await?;
        if out.timed_out {
            return Err(TransportError::TimedOut(timeout));
        }
        if out.code != Some(0) {
            return Err(TransportError::Failed {
                code: out.code,
                stderr: out.stderr_text(),
            });
        }
        Ok(out)
    }

    fn queue(&self) -> String {
        self.queue_dir.to_string_lossy().into_owned()
    }
}

impl Transport for PosixTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Incoming>, TransportError>> {
        Box::pin(async move {
            let tries = (opts.wait.as_millis() / POLL_STEP.as_millis()).to_string();
            let exec = Exec::new(TAKE, opts.wait + self.exec_timeout)
                .env("Q", self.queue())
                .env("TRIES", tries)
                .env("MAX_BATCH", opts.max_batch_bytes.to_string())
                .env("ENVELOPE", opts.envelope_limit.to_string())
                .env(
                    "INCLUDE_CLAIMED",
                    if opts.include_claimed { "1" } else { "0" },
                );
            let out = self.exec(exec).await?;
            parse_take(&out.stdout, opts.envelope_limit)
        })
    }

    fn deliver(
        &self,
        responses: Vec<Outgoing>,
    ) -> BoxFuture<'_, Result<Vec<(String, Delivery)>, TransportError>> {
        Box::pin(async move {
            if responses.is_empty() {
                return Ok(Vec::new());
            }
            let mut stdin = Vec::new();
            for response in &responses {
                stdin.extend_from_slice(response.id.as_bytes());
                stdin.push(b' ');
                stdin.extend_from_slice(STANDARD.encode(&response.file).as_bytes());
                stdin.push(b'\n');
            }
            let exec = Exec::new(DELIVER, self.exec_timeout)
                .stdin(stdin)
                .env("Q", self.queue());
            let out = self.exec(exec).await?;
            parse_deliver(&out.stdout, &responses)
        })
    }

    fn exec_count(&self) -> u64 {
        self.execs.load(Ordering::Relaxed)
    }
}

/// Reads `id claimed-before size base64|-` lines. The sandbox is untrusted: bad lines are
/// skipped, bad ids refused, undecodable content reported as unreadable.
fn parse_take(stdout: &[u8], envelope_limit: usize) -> Result<Vec<Incoming>, TransportError> {
    let text = std::str::from_utf8(stdout)
        .map_err(|_| TransportError::Garbled("take output is not text".into()))?;
    let mut out: Vec<Incoming> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(4, ' ');
        let (Some(id), Some(prev), Some(size), data) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            tracing::warn!("skipping a malformed take line");
            continue;
        };
        let Ok(size) = size.parse::<u64>() else {
            continue;
        };
        let claimed_flag = prev == "0" || prev == "1";
        if !claimed_flag || !is_valid_id(id) || out.iter().any(|i| i.id == id) {
            continue;
        }
        let file = match data.unwrap_or("") {
            "-" if size > envelope_limit as u64 => Err(TakeProblem::TooLarge { size }),
            "" | "-" => Err(TakeProblem::Unreadable),
            encoded => STANDARD
                .decode(encoded)
                .map_err(|_| TakeProblem::Unreadable),
        };
        out.push(Incoming {
            id: id.to_owned(),
            file,
            previously_claimed: prev == "1",
        });
    }
    Ok(out)
}

fn parse_deliver(
    stdout: &[u8],
    responses: &[Outgoing],
) -> Result<Vec<(String, Delivery)>, TransportError> {
    let text = String::from_utf8_lossy(stdout);
    let results: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    responses
        .iter()
        .map(
            |r| match results.iter().find(|(id, _)| *id == r.id).map(|(_, s)| *s) {
                Some("delivered") => Ok((r.id.clone(), Delivery::Delivered)),
                Some("gone") => Ok((r.id.clone(), Delivery::CallerGone)),
                other => Err(TransportError::Garbled(format!(
                    "delivering {} gave {other:?}",
                    r.id
                ))),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_lines_are_parsed_defensively() {
        let out = b"a1 0 2 e30=\nbad id 0 2 e30=\n../x 0 1 eA==\nbig 1 99999 -\ngone 0 5 \nnot-b64 0 2 ***\na1 0 2 e30=\nshort\n";
        let got = parse_take(out, 1000).unwrap();
        let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a1", "big", "gone", "not-b64"]);
        assert_eq!(got[0].file, Ok(b"{}".to_vec()));
        assert!(!got[0].previously_claimed);
        assert_eq!(got[1].file, Err(TakeProblem::TooLarge { size: 99999 }));
        assert!(got[1].previously_claimed);
        assert_eq!(got[2].file, Err(TakeProblem::Unreadable));
        assert_eq!(got[3].file, Err(TakeProblem::Unreadable));
    }

    #[test]
    fn every_response_needs_a_result_line() {
        let responses = vec![
            Outgoing {
                id: "a".into(),
                file: vec![],
            },
            Outgoing {
                id: "b".into(),
                file: vec![],
            },
        ];
        let got = parse_deliver(b"a delivered\nb gone\n", &responses).unwrap();
        assert_eq!(got[0].1, Delivery::Delivered);
        assert_eq!(got[1].1, Delivery::CallerGone);
        assert!(parse_deliver(b"a delivered\n", &responses).is_err());
        assert!(parse_deliver(b"a delivered\nb failed\n", &responses).is_err());
    }
}
