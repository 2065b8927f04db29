"""The watchdog between `siuo` and a managed server: the server never outlives the process that asked for it.

    python server_watchdog.py LOG GRACE_S DEATHSIG(0|1) -- SERVER ARGV...

Why a separate process: `siuo` can die in ways where none of its own code runs (SIGKILL, the OOM killer).
This script holds the read end of a pipe whose write end only `siuo` holds; when `siuo` closes it or dies,
the read returns EOF and the watchdog stops the server's whole process group (SIGTERM, then SIGKILL after
GRACE_S), so children the server spawned itself (a launcher's llama.cpp worker) go too. The server runs in
its own session, so a Ctrl-C in the terminal reaches `siuo`, which stops it in order. On Linux, with
DEATHSIG=1, the watchdog also asks for SIGTERM when its parent dies (belt and braces for a pipe end leaked
into a forked child), and the server asks for SIGTERM if the watchdog itself is killed.

Run as a plain script (stdlib only, the package is not imported): it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_DEATHSIG = 1


def _parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux only; else a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the server's process group, wait up to `grace_s` for all of it to go, then SIGKILL it."""
    pgid = proc.pid  # the server leads its own session, so its pid is its group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or its zombie keeps the group "alive"
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str]) -> int:
    log_path, grace_s, deathsig, sep, *cmd = argv
    if sep != "--" or not cmd:
        print("usage: server_watchdog.py LOG GRACE_S DEATHSIG -- ARGV...", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `siuo`, which then closes the pipe
    stopping = False

    def on_term(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    if deathsig == "1":
        _parent_death_signal(signal.SIGTERM)
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - held for the server's whole life
    os.dup2(log.fileno(), 2)  # this script's own errors land in the same log
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode(errors="replace"))

    def server_setup() -> None:
        _parent_death_signal(signal.SIGTERM)  # the watchdog killed with SIGKILL: the server still stops

    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=server_setup,  # noqa: PLW1509 - this script has one thread
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except OSError as exc:
        log.write(f"cannot start the server: {exc}\n".encode(errors="replace"))
        print(json.dumps({"error": str(exc)}), flush=True)
        return 127
    print(json.dumps({"pid": proc.pid}), flush=True)
    while not stopping and proc.poll() is None:
        ready, _, _ = select.select([0], [], [], 0.2)
        if ready and not os.read(0, 4096):
            break  # EOF: `siuo` asked for the stop, or is gone
    exited_by_itself = proc.poll()
    stop_group(proc, float(grace_s))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if exited_by_itself is not None:
        log.write(f"--- {stamp} the server exited by itself with code {exited_by_itself}\n".encode())
        return exited_by_itself if exited_by_itself > 0 else 1
    log.write(f"--- {stamp} server stopped\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
