//! The shell scripts deployment runs inside the sandbox.
//!
//! They are constant text: every input arrives in an environment variable, so no value
//! needs quoting and no secret ever appears in an argument list.

/// Creates the queue (owner-only), clears a stale `ready.json`, and prints the sha256 of
/// the gateway binary already there, or `missing`.
/// Inputs: `Q` (queue dir), `BIN` (gateway path).
pub(crate) const PREPARE: &str = r#"set -e
umask 077
mkdir -p "$Q/requests" "$Q/responses" "$Q/logs" "$(dirname "$BIN")"
chmod 700 "$Q" "$Q/requests" "$Q/responses" "$Q/logs"
rm -f "$Q/ready.json" "$Q/server.pid"
if [ -f "$BIN" ]; then
  sha256sum "$BIN" | cut -d ' ' -f 1
else
  echo missing
fi
"#;

/// Appends stdin to `$BIN.part` (`FIRST=1` truncates first); with `LAST=1` checks the
/// sha256 against `SHA` and moves the file into place.
pub(crate) const UPLOAD_CHUNK: &str = r#"set -e
umask 077
if [ "$FIRST" = 1 ]; then cat > "$BIN.part"; else cat >> "$BIN.part"; fi
if [ "$LAST" = 1 ]; then
  got=$(sha256sum "$BIN.part" | cut -d ' ' -f 1)
  if [ "$got" != "$SHA" ]; then
    rm -f "$BIN.part"
    echo "uploaded gateway has sha256 $got, expected $SHA" >&2
    exit 3
  fi
  chmod 700 "$BIN.part"
  mv -f "$BIN.part" "$BIN"
fi
"#;

/// Starts the gateway detached, records its pid, and waits for `ready.json` (at most
/// `TRIES` rounds of 10 ms), printing it. Exits 3 with the log tail if the gateway dies
/// first, 4 on time-out. The gateway's own settings arrive in the environment too.
pub(crate) const START: &str = r#"alive() {
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}
cd "$Q"
if command -v setsid >/dev/null 2>&1; then
  setsid "$BIN" </dev/null >>logs/bridge.log 2>&1 &
else
  "$BIN" </dev/null >>logs/bridge.log 2>&1 &
fi
pid=$!
echo "$pid" > server.pid.tmp && mv -f server.pid.tmp server.pid
i=0
while [ "$i" -lt "$TRIES" ]; do
  if [ -f ready.json ]; then echo "pid $pid"; cat ready.json; exit 0; fi
  if ! alive "$pid"; then
    echo "the gateway exited before it was ready; its log:" >&2
    tail -n 40 logs/bridge.log >&2
    exit 3
  fi
  sleep 0.01
  i=$((i + 1))
done
echo "the gateway was not ready in time; its log:" >&2
tail -n 40 logs/bridge.log >&2
kill -KILL "$pid" 2>/dev/null
exit 4
"#;

/// Asks the gateway to stop: it stops accepting and finishes its in-flight callers.
pub(crate) const TERMINATE: &str = r#"pid=$(cat "$Q/server.pid" 2>/dev/null || true)
[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
"#;

/// Waits up to `TRIES` rounds of 50 ms for the gateway to exit (a zombie counts as gone:
/// its reaper may be slow), then KILLs it, then
/// removes the queue directory (the uploaded binary stays, for the next deployment).
pub(crate) const REAP: &str = r#"alive() {
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}
pid=$(cat "$Q/server.pid" 2>/dev/null || true)
if [ -n "$pid" ]; then
  i=0
  while alive "$pid" && [ "$i" -lt "$TRIES" ]; do
    sleep 0.05
    i=$((i + 1))
  done
  kill -KILL "$pid" 2>/dev/null || true
fi
rm -rf "$Q"
"#;
