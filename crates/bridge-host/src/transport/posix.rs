//! The queue over exec with nothing but POSIX `sh` and coreutils in the sandbox, so it
//! serves any queue_v1 gateway, Paperclip's own included.
//!
//! `take` is one exec that long-polls inside the sandbox (a cheap wait loop) and prints
//! every pending request as a line `id claimed-before size base64`; `deliver` is one exec
//! whose stdin carries a header of `id length` lines and then every ready response's raw
//! bytes. Scripts are constant text; inputs come in the environment.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bridge_protocol::layout::is_valid_id;
use bridge_protocol::shown;

use super::{
    Deliveries, Delivery, Execs, PutItem, PutOutcome, TakeOptions, TakeProblem, Taken, Transport,
    TransportError,
};
use crate::runner::{BoxFuture, Exec, ExecOutput, Runner, RunnerError};

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
    [ "$INCLUDE_CLAIMED" != 1 ] && [ -e "$id.claimed" ] && continue
    return 0
  done
  return 1
}
i=0
while ! pending && [ "$i" -lt "$TRIES" ]; do sleep 0.02; i=$((i + 1)); done
for m in *.claimed; do
  [ -e "$m" ] || continue
  [ -e "${m%.claimed}.json" ] || rm -f "$m"
done
total=0; count=0
set -f
for f in $(ls -tr 2>/dev/null); do
  case $f in *.json) ;; *) continue;; esac
  id=${f%.json}
  valid "$id" && [ -f "$f" ] || continue
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
exit 0
"#;

/// Stdin: a count line, one `id length` line per response, then the responses' raw
/// bytes back to back. The shell's `read` takes the header (it never over-reads a pipe),
/// `cat` saves the rest, and each response is cut out of that file: no base64 and no
/// byte-at-a-time `read` of a large line (which takes seconds per megabyte in dash).
const DELIVER: &str = r#"cd "$Q" 2>/dev/null || { echo "no queue at $Q" >&2; exit 3; }
umask 077
for f in responses/.deliver.*; do
  [ -e "$f" ] || continue
  kill -0 "${f##*.}" 2>/dev/null || rm -f "$f"
done
batch="responses/.deliver.$$"
trap 'rm -f "$batch"' EXIT
IFS= read -r count || { echo "no header" >&2; exit 4; }
case $count in ''|*[!0-9]*) echo "bad count" >&2; exit 4;; esac
heads=""; total=0; i=0
while [ "$i" -lt "$count" ]; do
  IFS=' ' read -r id len || { echo "short header" >&2; exit 4; }
  case $len in ''|*[!0-9]*) echo "bad length" >&2; exit 4;; esac
  heads="$heads$id $len
"
  total=$((total + len)); i=$((i + 1))
done
cat > "$batch" || exit 4
got=$(wc -c < "$batch")
[ "$((got + 0))" -eq "$total" ] || { echo "batch has $got bytes, expected $total" >&2; exit 4; }
off=1
while IFS=' ' read -r id len; do
  [ -n "$id" ] || continue
  start=$off; off=$((off + len))
  case $id in *[!A-Za-z0-9_-]*) echo "$id invalid"; continue;; esac
  lock="responses/.$id.lock"
  n=0
  # A lock older than 100 rounds is taken to be stale (its holder was killed).
  while ! mkdir "$lock" 2>/dev/null; do
    n=$((n + 1)); [ "$n" -ge 100 ] && break; sleep 0.01
  done
  tmp="responses/$id.json.tmp"
  if [ ! -f "requests/$id.json" ]; then
    rm -f "requests/$id.claimed"; echo "$id gone"
  elif tail -c +"$start" "$batch" | head -c "$len" > "$tmp" \
      && [ "$(wc -c < "$tmp")" -eq "$len" ] && mv -f "$tmp" "responses/$id.json"; then
    if [ -f "requests/$id.json" ]; then
      rm -f "requests/$id.json" "requests/$id.claimed"; echo "$id delivered"
    elif [ -f "responses/$id.json" ]; then
      rm -f "responses/$id.json" "requests/$id.claimed"; echo "$id gone"
    else
      rm -f "requests/$id.claimed"; echo "$id delivered"
    fi
  else
    rm -f "$tmp"; echo "$id failed"
  fi
  rmdir "$lock" 2>/dev/null
done <<EOF
$heads
EOF
exit 0
"#;

/// The POSIX shell transport over any [`Runner`].
#[derive(Debug)]
pub struct PosixTransport {
    execs: Execs,
    queue_dir: PathBuf,
}

impl PosixTransport {
    /// `exec_timeout` bounds each exec beyond its long-poll wait.
    pub fn new(runner: Arc<dyn Runner>, queue_dir: PathBuf, exec_timeout: Duration) -> Self {
        Self {
            execs: Execs::new(runner, exec_timeout),
            queue_dir,
        }
    }

    async fn exec(&self, exec: Exec) -> Result<ExecOutput, TransportError> {
        self.execs.run(exec).await
    }

    fn queue(&self) -> String {
        self.queue_dir.to_string_lossy().into_owned()
    }
}

impl Transport for PosixTransport {
    fn take(&self, opts: TakeOptions) -> BoxFuture<'_, Result<Vec<Taken>, TransportError>> {
        Box::pin(async move {
            let tries = (opts.wait.as_millis() / POLL_STEP.as_millis()).to_string();
            let exec = self
                .execs
                .take(TAKE, &opts)
                .env("Q", self.queue())
                .env("TRIES", tries);
            let out = self.exec(exec).await?;
            parse_take(&out.stdout, opts.envelope_limit)
        })
    }

    fn deliver(&self, responses: Vec<PutItem>) -> Deliveries<'_> {
        Box::pin(async move {
            if let Some(bad) = responses.iter().find(|r| !is_valid_id(&r.id)) {
                return Err(
                    RunnerError::Invalid(format!("invalid response id {:?}", bad.id)).into(),
                );
            }
            let stdin = deliver_stdin(&responses);
            let exec = self
                .execs
                .exec(DELIVER, Duration::ZERO)
                .stdin(stdin)
                .env("Q", self.queue());
            let out = self.exec(exec).await?;
            parse_deliver(&out.stdout, &responses)
        })
    }

    fn exec_count(&self) -> u64 {
        self.execs.count()
    }
}

/// The deliver script's stdin: header lines, then every response's bytes.
fn deliver_stdin(responses: &[PutItem]) -> Vec<u8> {
    let mut header = format!("{}\n", responses.len());
    for response in responses {
        header.push_str(&format!("{} {}\n", response.id, response.file.len()));
    }
    let body_len: usize = responses.iter().map(|r| r.file.len()).sum();
    let mut stdin = Vec::with_capacity(header.len() + body_len);
    stdin.extend_from_slice(header.as_bytes());
    for response in responses {
        stdin.extend_from_slice(&response.file);
    }
    stdin
}

/// Reads `id claimed-before size base64|-` lines. The sandbox is untrusted: bad lines are
/// skipped, bad ids refused, content that does not match its size reported as
/// unreadable; output with lines but not one good line is garbled.
fn parse_take(stdout: &[u8], envelope_limit: usize) -> Result<Vec<Taken>, TransportError> {
    let mut out: Vec<Taken> = Vec::new();
    let mut skipped = 0usize;
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match parse_take_line(line, envelope_limit) {
            Some(incoming) if !out.iter().any(|i| i.id == incoming.id) => out.push(incoming),
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(skipped, "skipped malformed take lines");
        if out.is_empty() {
            return Err(TransportError::Garbled(format!(
                "take printed {skipped} lines, none of them a request"
            )));
        }
    }
    Ok(out)
}

fn parse_take_line(line: &[u8], envelope_limit: usize) -> Option<Taken> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.splitn(4, ' ');
    let (id, prev, size) = (fields.next()?, fields.next()?, fields.next()?);
    let size: u64 = size.parse().ok()?;
    let previously_claimed = match prev {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    if !is_valid_id(id) {
        return None;
    }
    let too_large = Err(TakeProblem::TooLarge { size });
    let file = match fields.next().unwrap_or("") {
        _ if size > envelope_limit as u64 => too_large,
        "" | "-" => Err(TakeProblem::Unreadable),
        encoded => match STANDARD.decode(encoded) {
            Ok(bytes) if bytes.len() as u64 == size => Ok(bytes),
            _ => Err(TakeProblem::Unreadable),
        },
    };
    Some(Taken {
        id: id.to_owned(),
        file,
        previously_claimed,
    })
}

fn parse_deliver(
    stdout: &[u8],
    responses: &[PutItem],
) -> Result<Vec<(String, PutOutcome)>, TransportError> {
    let text = String::from_utf8_lossy(stdout);
    let results: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    let answered = |r: &PutItem| results.iter().any(|(id, _)| *id == r.id);
    if !responses.iter().any(answered) {
        // Not one answer's failure: no result for any (a lost channel, nonsense).
        return Err(TransportError::Garbled("delivering gave no result".into()));
    }
    Ok(responses
        .iter()
        .map(|r| {
            let outcome = match results.iter().find(|(id, _)| *id == r.id).map(|(_, s)| *s) {
                Some("delivered") => Ok(Delivery::Delivered),
                Some("gone") => Ok(Delivery::CallerGone),
                Some(other) => Err(format!("the put said {}", shown(other))),
                None => Err("the put gave no result for it".into()),
            };
            (r.id.clone(), outcome)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_lines_are_parsed_defensively() {
        let out = b"a1 0 2 e30=\nbad id 0 2 e30=\n../x 0 1 eA==\nbig 1 99999 -\ngone 0 5 \nnot-b64 0 2 ***\na1 0 2 e30=\nshort\n\xff\xfe 0 1 eA==\nliar 0 3 e30=\n";
        let got = parse_take(out, 1000).unwrap();
        let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a1", "big", "gone", "not-b64", "liar"]);
        assert_eq!(got[0].file, Ok(b"{}".to_vec()));
        assert!(!got[0].previously_claimed);
        assert_eq!(got[1].file, Err(TakeProblem::TooLarge { size: 99999 }));
        assert!(got[1].previously_claimed);
        assert_eq!(got[2].file, Err(TakeProblem::Unreadable));
        assert_eq!(got[3].file, Err(TakeProblem::Unreadable));
        assert_eq!(got[4].file, Err(TakeProblem::Unreadable), "size mismatch");
    }

    #[test]
    fn nonsense_take_output_is_garbled_and_silence_is_empty() {
        assert!(matches!(
            parse_take(b"<html>oops</html>\nnot a queue\n", 1000),
            Err(TransportError::Garbled(_))
        ));
        assert_eq!(parse_take(b"", 1000).unwrap(), []);
        let lying = parse_take(b"huge 0 5000 e30=\n", 1000).unwrap();
        assert_eq!(lying[0].file, Err(TakeProblem::TooLarge { size: 5000 }));
    }

    #[test]
    fn deliver_stdin_is_header_then_raw_bytes() {
        let stdin = deliver_stdin(&[
            PutItem {
                id: "a".into(),
                file: b"xy\n".to_vec(),
            },
            PutItem {
                id: "b".into(),
                file: vec![0, 255],
            },
        ]);
        assert_eq!(stdin, b"2\na 3\nb 2\nxy\n\x00\xff");
    }

    #[test]
    fn every_response_needs_a_result_line() {
        let responses = vec![
            PutItem {
                id: "a".into(),
                file: vec![],
            },
            PutItem {
                id: "b".into(),
                file: vec![],
            },
        ];
        let got = parse_deliver(b"a delivered\nb gone\n", &responses).unwrap();
        assert_eq!(got[0].1, Ok(Delivery::Delivered));
        assert_eq!(got[1].1, Ok(Delivery::CallerGone));
        let got = parse_deliver(b"a delivered\n", &responses).unwrap();
        assert_eq!(got[0].1, Ok(Delivery::Delivered));
        assert!(got[1].1.is_err(), "{got:?}");
        let got = parse_deliver(b"a delivered\nb failed\n", &responses).unwrap();
        assert!(got[1].1.is_err(), "{got:?}");
        // Not one result for any of them: the call failed, not the answers.
        assert!(parse_deliver(b"nonsense here\n", &responses).is_err());
    }
}
