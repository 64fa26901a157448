"""E2B's official Python SDK against the fake E2B (tests/fake_e2b): commands, stdin,
kill, time-outs, files and the sandbox's lifecycle, each checked. The fake is a test
double; this is what makes it a faithful one. Prints one line per check and exits non-zero
on the first failure. Reads E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY like the SDK does,
and FAKE_DIR, a directory the checks may write in."""

import os
import sys
import time

from e2b import Sandbox
from e2b.exceptions import AuthenticationException, TimeoutException
from e2b.sandbox.commands.command_handle import CommandExitException

checks = 0


def check(name, ok, detail=""):
    global checks
    if not ok:
        print(f"FAILED: {name} {detail}")
        sys.exit(1)
    checks += 1
    print(f"ok: {name}")


work = os.environ["FAKE_DIR"]
sbx = Sandbox.create(template="base", timeout=120)
check("create gives a sandbox id", bool(sbx.sandbox_id), sbx.sandbox_id)

r = sbx.commands.run("echo hello; echo oops >&2")
check("run collects stdout, stderr and exit 0",
      (r.stdout, r.stderr, r.exit_code) == ("hello\n", "oops\n", 0), repr(r))

try:
    sbx.commands.run("echo partial; exit 3")
    check("a failing command raises", False)
except CommandExitException as e:
    check("a failing command raises with its exit code and output",
          e.exit_code == 3 and e.stdout == "partial\n", repr(e))

r = sbx.commands.run('printf "%s %s" "$GREETING" "$(pwd)"', envs={"GREETING": "hi"}, cwd=work)
check("envs and cwd reach the process", r.stdout == f"hi {work}", repr(r.stdout))

seen = []
r = sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=seen.append)
check("output streams to callbacks", "".join(seen) == "line1\nline2\nline3\n", repr(seen))

h = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "abc")
sbx.commands.send_stdin(h.pid, b"\x00def\n")
sbx.commands.close_stdin(h.pid)
r = h.wait()
check("stdin sent in pieces then closed reaches the process in order",
      r.stdout == "abc\x00def\n", repr(r.stdout))

h = sbx.commands.run("sleep 30", background=True)
listed = [p.pid for p in sbx.commands.list()]
check("list shows a running process", h.pid in listed, repr(listed))
started = time.monotonic()
check("kill finds the process", sbx.commands.kill(h.pid))
try:
    h.wait()
    check("a killed command raises", False)
except CommandExitException as e:
    check("a killed command ends at once, unsuccessfully",
          time.monotonic() - started < 10 and e.exit_code != 0, repr(e))
check("kill of a gone process says so", sbx.commands.kill(h.pid) is False)

started = time.monotonic()
try:
    sbx.commands.run("sleep 30", timeout=1)
    check("a command past its time-out raises", False)
except TimeoutException:
    check("a command past its time-out is ended by the deadline",
          time.monotonic() - started < 10)

blob = bytes(range(256)) * 4096
path = os.path.join(work, "nested", "dir", "blob.bin")
sbx.files.write(path, blob)
check("a written file reads back byte for byte", sbx.files.read(path, format="bytes") == blob)
sbx.files.write(path, b"short")
check("a write overwrites", sbx.files.read(path) == "short")
sbx.files.write_files([{"path": os.path.join(work, "a.txt"), "data": "A"},
                       {"path": os.path.join(work, "b.txt"), "data": "B"}])
check("write_files writes each file",
      open(os.path.join(work, "a.txt")).read() + open(os.path.join(work, "b.txt")).read() == "AB")

sbx.set_timeout(60)
check("set_timeout is accepted", True)
check("kill ends the sandbox", sbx.kill() is True)

try:
    Sandbox.create(template="base", api_key="e2b_00000000000000000000000000000000")
    check("a bad API key is refused", False)
except AuthenticationException:
    check("a bad API key is refused", True)

print(f"SDK checks passed: {checks}")
