//! The shell scripts deployment runs inside the sandbox.
//!
//! They are constant text: every input arrives in an environment variable, so no value
//! needs quoting and no secret ever appears in an argument list. Every one is safe to run
//! again after a lost result (the exec channel may drop after the script ran): that is what
//! lets deployment retry each step. Exit 75 (`EX_TEMPFAIL`) means "transient, try again".

/// The programs these scripts run besides `sh` and its builtins (`setsid` is used only
/// where it exists).
pub const SCRIPT_TOOLS: [&str; 14] = [
    "cat",
    "chmod",
    "cut",
    "dirname",
    "grep",
    "head",
    "mkdir",
    "mv",
    "rm",
    "sed",
    "sha256sum",
    "sleep",
    "tail",
    "tr",
];

/// Shell functions the scripts share. `alive PID`: the process exists and is no zombie (its
/// reaper may be slow). `is_gateway PID`: alive and, where `/proc` tells, running `$BIN`
/// directly or through an interpreter (a recycled pid is not our gateway).
const FUNCTIONS: &str = r#"alive() {
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}
is_gateway() {
  alive "$1" || return 1
  [ -r "/proc/$1/cmdline" ] || return 0
  tr '\0' '\n' < "/proc/$1/cmdline" | head -n 2 | grep -qxF -e "$BIN"
}
"#;

/// Creates the queue (owner-only) and prints two lines: the sandbox's `uname -m` (which
/// gateway build it needs; `unknown` if uname fails), then the sha256 of the gateway
/// binary already there, or `missing`. It leaves `ready.json` and `server.pid` alone: a
/// gateway may already serve this queue (an earlier attempt's), and [`START`] decides
/// about it. Inputs: `Q` (queue dir), `BIN` (gateway path).
pub(crate) const PREPARE: &str = r#"set -e
umask 077
mkdir -p "$Q/requests" "$Q/responses" "$Q/logs" "$(dirname "$BIN")"
chmod 700 "$Q" "$Q/requests" "$Q/responses" "$Q/logs"
uname -m 2>/dev/null || echo unknown
if [ -f "$BIN" ]; then
  sha256sum "$BIN" | cut -d ' ' -f 1
else
  echo missing
fi
"#;

/// Stores stdin as chunk `INDEX` of the upload of `SHA` (temp name, checked against
/// `PART_SHA`, then renamed): sending a chunk twice is harmless. A damaged chunk exits 75.
pub(crate) const UPLOAD_CHUNK: &str = r#"set -e
umask 077
dir="$BIN.upload-$SHA"
mkdir -p "$dir"
tmp="$dir/tmp.$$"
cat > "$tmp"
got=$(sha256sum "$tmp" | cut -d ' ' -f 1)
if [ "$got" != "$PART_SHA" ]; then
  rm -f "$tmp"
  echo "chunk $INDEX arrived damaged (sha256 $got)" >&2
  exit 75
fi
mv -f "$tmp" "$dir/$INDEX"
"#;

/// Where [`UPLOAD_CHUNK`] stores chunk `index` of the upload of `sha` for `binary` (the
/// same name its script builds from `$BIN`, `$SHA` and `$INDEX`).
pub(crate) fn upload_chunk_path(
    binary: &std::path::Path,
    sha: &str,
    index: usize,
) -> std::path::PathBuf {
    let mut dir = binary.as_os_str().to_owned();
    dir.push(format!(".upload-{sha}"));
    std::path::PathBuf::from(dir).join(format!("{index:06}"))
}

/// Puts the uploaded binary in place: the `COUNT` chunks joined under a temp name, checked
/// against `SHA`, renamed over `BIN`. Nothing to do if `BIN` already has that hash (an
/// earlier attempt finished).
pub(crate) const INSTALL: &str = r#"set -e
umask 077
dir="$BIN.upload-$SHA"
if [ -f "$BIN" ] && [ "$(sha256sum "$BIN" | cut -d ' ' -f 1)" = "$SHA" ]; then
  rm -rf "$dir"
  exit 0
fi
tmp="$BIN.tmp.$$"
: > "$tmp"
i=0
while [ "$i" -lt "$COUNT" ]; do
  part="$dir/$(printf '%06d' "$i")"
  if [ ! -f "$part" ]; then rm -f "$tmp"; echo "chunk $i of the upload is missing" >&2; exit 3; fi
  cat "$part" >> "$tmp"
  i=$((i + 1))
done
got=$(sha256sum "$tmp" | cut -d ' ' -f 1)
if [ "$got" != "$SHA" ]; then
  rm -f "$tmp"
  rm -rf "$dir"
  echo "uploaded gateway has sha256 $got, expected $SHA" >&2
  exit 3
fi
chmod 700 "$tmp"
mv -f "$tmp" "$BIN"
rm -rf "$dir"
"#;

/// The body of [`START`], after [`FUNCTIONS`]. Under a lock (`start.lock`, a directory
/// holding its owner's pid: a dead owner's lock is broken), so two attempts never both
/// start one: a live gateway of this deployment (`DEPLOY`, recorded in `gateway.deploy`)
/// is kept and its `ready.json` printed; another deployment's is stopped first (one
/// gateway per queue). A new gateway gets a clean slate: no `ready.json`, no requests or
/// answers of dead callers. Waits at most `TRIES` rounds of 10 ms for `ready.json`.
/// Exits 3 with the log tail if the gateway dies first, 4 on time-out, 75 if the lock
/// stays busy. Once `ready.json` is printed it runs `ready_then`, which the script
/// defines before this body.
const START_BODY: &str = r#"cd "$Q"
lock=start.lock
i=0
until mkdir "$lock" 2>/dev/null; do
  holder=$(cat "$lock/pid" 2>/dev/null || true)
  if [ -n "$holder" ] && ! alive "$holder"; then rm -rf "$lock"; continue; fi
  i=$((i + 1))
  if [ "$i" -ge "$TRIES" ]; then
    [ -n "$holder" ] || rm -rf "$lock"
    echo "another start of the gateway holds the lock" >&2
    exit 75
  fi
  sleep 0.01
done
echo "$$" > "$lock/pid"
trap 'rm -rf "$lock"' EXIT
await_ready() {
  i=0
  while [ "$i" -lt "$TRIES" ]; do
    if [ -f ready.json ]; then echo "pid $1"; cat ready.json; ready_then; fi
    if ! alive "$1"; then
      echo "the gateway exited before it was ready; its log:" >&2
      tail -n 40 logs/bridge.log >&2
      exit 3
    fi
    sleep 0.01
    i=$((i + 1))
  done
  echo "the gateway was not ready in time; its log:" >&2
  tail -n 40 logs/bridge.log >&2
  kill -KILL "$1" 2>/dev/null
  exit 4
}
old=$(cat server.pid 2>/dev/null || true)
if [ -n "$old" ] && is_gateway "$old"; then
  if [ "$(cat gateway.deploy 2>/dev/null || true)" = "$DEPLOY" ]; then await_ready "$old"; fi
  kill -TERM "$old" 2>/dev/null || true
  i=0
  while alive "$old" && [ "$i" -lt "$TRIES" ]; do sleep 0.01; i=$((i + 1)); done
  kill -KILL "$old" 2>/dev/null || true
fi
rm -f ready.json server.pid requests/* responses/*
echo "$DEPLOY" > gateway.deploy.tmp && mv -f gateway.deploy.tmp gateway.deploy
if command -v setsid >/dev/null 2>&1; then
  setsid "$BIN" </dev/null >>logs/bridge.log 2>&1 &
else
  "$BIN" </dev/null >>logs/bridge.log 2>&1 &
fi
pid=$!
echo "$pid" > server.pid.tmp && mv -f server.pid.tmp server.pid
await_ready "$pid"
"#;

/// Starts the gateway detached unless this deployment's already runs, and prints
/// `pid N` and its `ready.json` (see [`START_BODY`]). The gateway's own settings arrive
/// in the environment too.
pub(crate) fn start() -> String {
    format!("{FUNCTIONS}ready_then() {{ exit 0; }}\n{START_BODY}")
}

/// Start-up in one streaming exec: [`PREPARE`]'s queue, then `machine M` (`uname -m`),
/// and the installed gateway binary is checked against the sha256 the host has for that
/// machine (`SHA_X86_64`, `SHA_AARCH64`, else `SHA_ANY`). If it differs, the script
/// prints `upload` and reads a line `SIZE SHA` and then exactly `SIZE` bytes of stdin as
/// the new binary (checked, renamed into place; a damaged one exits 75). Then
/// [`START_BODY`], and once `ready.json` is printed the exec becomes the stream
/// transport's session on the same stdin and stdout. The host sends nothing after the
/// binary until the session's greeting, so `head` cannot read past it (and `read` takes
/// its line a byte at a time from a pipe).
pub(crate) fn start_session() -> String {
    format!("{FUNCTIONS}{SESSION_PRELUDE}{START_BODY}")
}

/// The part of [`start_session`] before [`START_BODY`].
const SESSION_PRELUDE: &str = r#"umask 077
mkdir -p "$Q/requests" "$Q/responses" "$Q/logs" "$(dirname "$BIN")" || exit 3
chmod 700 "$Q" "$Q/requests" "$Q/responses" "$Q/logs" || exit 3
machine=$(uname -m 2>/dev/null || echo unknown)
echo "machine $machine"
case "$machine" in
  x86_64|amd64) want=${SHA_X86_64:-$SHA_ANY} ;;
  aarch64|arm64) want=${SHA_AARCH64:-$SHA_ANY} ;;
  *) want=$SHA_ANY ;;
esac
have=missing
[ ! -f "$BIN" ] || have=$(sha256sum "$BIN" | cut -d ' ' -f 1)
if [ -z "$want" ] || [ "$have" != "$want" ]; then
  tmp="$BIN.tmp.$$"
  echo upload
  read -r size sha || exit 75
  head -c "$size" > "$tmp" || { rm -f "$tmp"; exit 75; }
  got=$(sha256sum "$tmp" | cut -d ' ' -f 1)
  if [ "$got" != "$sha" ]; then
    rm -f "$tmp"
    echo "the gateway binary arrived damaged (sha256 $got)" >&2
    exit 75
  fi
  chmod 700 "$tmp" && mv -f "$tmp" "$BIN" || exit 3
fi
ready_then() {
  rm -rf "$Q/start.lock"
  trap - EXIT
  exec "$BIN" session --queue-dir "$Q"
}
"#;

/// Prints `alive` if the gateway in `server.pid` runs, else `dead`: the supervisor's
/// cheap liveness check. Inputs: `Q`, `BIN`.
pub(crate) fn check() -> String {
    format!(
        "{FUNCTIONS}{}",
        r#"pid=$(cat "$Q/server.pid" 2>/dev/null || true)
if [ -n "$pid" ] && is_gateway "$pid"; then echo alive; else echo dead; fi
"#
    )
}

/// Prints the end of the gateway's log (`LINES` lines), for an error message.
pub(crate) const LOG_TAIL: &str = r#"tail -n "$LINES" "$Q/logs/bridge.log" 2>/dev/null || true
"#;

/// Asks the gateway to stop: it stops accepting and finishes its in-flight callers.
pub(crate) const TERMINATE: &str = r#"pid=$(cat "$Q/server.pid" 2>/dev/null || true)
[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
"#;

/// Waits up to `TRIES` rounds of 50 ms for the gateway to exit, then KILLs it, then
/// removes the queue directory (the uploaded binary stays, for the next deployment).
pub(crate) fn reap() -> String {
    format!(
        "{FUNCTIONS}{}",
        r#"pid=$(cat "$Q/server.pid" 2>/dev/null || true)
if [ -n "$pid" ]; then
  i=0
  while alive "$pid" && [ "$i" -lt "$TRIES" ]; do
    sleep 0.05
    i=$((i + 1))
  done
  kill -KILL "$pid" 2>/dev/null || true
fi
rm -rf "$Q"
"#
    )
}
