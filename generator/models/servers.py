"""Managed local servers: an endpoint with a `[endpoints.<name>.server]` section is started when a stage
first needs it and nothing answers at its `base_url`, and stopped when the stage (or `siuo run`) ends.

Why here, in the model door: `ModelHub.runtime` is the one place every stage reaches an endpoint through,
so a server starts exactly when some stage needs it, whichever stage that is. `siuo run` holds a
`SERVERS.session()` around its stages, so one server serves the whole run instead of one per stage.

How it never outlives `siuo`: it runs under `server_watchdog.py`, which stops the server's whole process
group when a pipe from this process closes, i.e. on a normal stop and when `siuo` dies by SIGTERM or SIGKILL
(see that module). Ctrl-C and exceptions reach the `finally` of the hub and the session, which stop it in
order; an `atexit` hook catches a process that forgot to close its hub.

The server listens on 127.0.0.1 at the configured port when that port is free, else at a free one; requests
go there, but the request cache and what is learnt about the server stay keyed by the configured
`base_url`, so a run resumed on another port still answers from its cache.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console

from generator.config import Endpoint, ServerSettings
from generator.errors import UserError
from generator.terminal import printable

WATCHDOG = Path(__file__).with_name("server_watchdog.py")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PR_SET_DEATHSIG = 1


class ServerStartError(UserError):
    """A managed server did not come up; the message names the endpoint and the server's log."""


def builtin_command(name: str, endpoint: Endpoint) -> list[str]:
    """The argv of a built-in server (`server.builtin`)."""
    if name == "smollm2":
        n_ctx = endpoint.context_window or 4096
        return ["{python}", "-m", "generator.testing.smollm2", "--port", "{port}", "--n-ctx", str(n_ctx), "--log", "-"]
    raise UserError(f"unknown built-in server {name!r} (known: smollm2)")  # the config's Literal stops it first


def server_command(spec: ServerSettings, endpoint: Endpoint, port: int) -> list[str]:
    argv = spec.command if spec.command is not None else builtin_command(spec.builtin or "", endpoint)
    return [arg.replace("{port}", str(port)).replace("{python}", sys.executable) for arg in argv]


def served_url(base_url: str, port: int) -> str:
    """`base_url` moved to 127.0.0.1:`port`, its path kept (`/v1`)."""
    parts = urlsplit(base_url)
    return urlunsplit(("http", f"127.0.0.1:{port}", parts.path.rstrip("/"), "", ""))


def health_url(spec: ServerSettings, base_url: str) -> str:
    """Where readiness is asked for a server at `base_url` (the configured one, or where it was started)."""
    parts = urlsplit(base_url)
    if spec.health_url is None:
        return base_url.rstrip("/") + "/models"
    if spec.health_url.startswith("/"):
        return urlunsplit((parts.scheme, parts.netloc, spec.health_url, "", ""))
    return spec.health_url.replace("{port}", str(parts.port or ""))


def answers(url: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """Whether `url` answers HTTP 2xx now (no proxy for loopback: a proxy would answer for a dead server)."""
    handlers = [urllib.request.ProxyHandler({})] if urlsplit(url).hostname in LOOPBACK_HOSTS else []
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_port(base_url: str) -> int:
    """The configured port when `base_url` is on this machine and the port is free (the address the user
    wrote keeps working), else any free one."""
    parts = urlsplit(base_url)
    if parts.hostname in LOOPBACK_HOSTS and parts.port and port_is_free(parts.port):
        return parts.port
    return free_port()


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes a child get `sig` when the thread that started it dies (Linux only; None
    elsewhere, and None off the main thread, whose end is not the process's end). Why: a child a launcher
    started (llama.cpp under the SmolLM2 launcher) must not be orphaned when the launcher is killed."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def set_signal() -> None:
        prctl(PR_SET_DEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would stop us
            os._exit(1)

    return set_signal


@dataclass
class ManagedServer:
    """One running server under its watchdog."""

    endpoint_name: str
    base_url: str
    """Where it serves (the configured base_url's path on 127.0.0.1:<port>)."""
    log_path: Path
    watchdog: subprocess.Popen
    pid: int
    """The server's pid, also its process group id (it leads its own session)."""
    stop_timeout_s: float
    refs: int = 0

    def alive(self) -> bool:
        return self.watchdog.poll() is None

    def stop(self) -> None:
        """Close the pipe (the watchdog stops the group), wait for it; kill the group ourselves if it hangs."""
        with contextlib.suppress(OSError):
            if self.watchdog.stdin is not None:
                self.watchdog.stdin.close()
        try:
            self.watchdog.wait(timeout=self.stop_timeout_s + 5)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
            self.watchdog.wait()
        if self.watchdog.returncode < 0:  # the watchdog was killed (by us, wedged, or by someone): no orphan
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        if self.watchdog.stdout is not None:
            self.watchdog.stdout.close()


def _read_line(pipe, timeout: float) -> str:
    ready, _, _ = select.select([pipe], [], [], timeout)
    return pipe.readline().decode(errors="replace") if ready else ""


def _last_log_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("---")]
    except OSError:
        return ""
    return printable(lines[-1].strip())[:200] if lines else ""


def start_server(
    endpoint_name: str, endpoint: Endpoint, log_dir: Path | None, console: Console | None = None
) -> ManagedServer:
    """Start the endpoint's server under a watchdog and wait until it answers (bounded by
    `server.startup_timeout_s`); a server that exits or stays silent is stopped and raises ServerStartError."""
    spec = endpoint.server
    assert spec is not None
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.gettempdir()) / "siuo-servers"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{endpoint_name}.log"
    port = choose_port(endpoint.base_url)
    url = served_url(endpoint.base_url, port)
    argv = server_command(spec, endpoint, port)
    main_thread = threading.current_thread() is threading.main_thread()
    watchdog = subprocess.Popen(
        [sys.executable, "-I", str(WATCHDOG), str(log_path), str(spec.stop_timeout_s), "1" if main_thread else "0"]
        + ["--", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    where = f"(log: {log_path})"
    try:
        hello = json.loads(_read_line(watchdog.stdout, 30.0) or "{}")
        if "pid" not in hello:
            watchdog.kill()
            watchdog.wait()
            why = hello.get("error") or "its watchdog did not start"
            raise ServerStartError(f"endpoint {endpoint_name!r}: cannot start its server: {printable(why)} {where}")
        server = ManagedServer(endpoint_name, url, log_path, watchdog, hello["pid"], spec.stop_timeout_s)
        try:
            _wait_until_up(server, spec, endpoint, console or Console(stderr=True))
        except BaseException:
            server.stop()
            raise
        return server
    except BaseException:
        if watchdog.poll() is None:
            watchdog.kill()
            watchdog.wait()
        raise


def _wait_until_up(server: ManagedServer, spec: ServerSettings, endpoint: Endpoint, console: Console) -> None:
    name, where = server.endpoint_name, f"(log: {server.log_path})"
    probe = health_url(spec, server.base_url)
    started = time.monotonic()
    deadline = started + spec.startup_timeout_s
    label = f"starting the server of endpoint {printable(name)} at {server.base_url}"
    with console.status(f"{label} …") as status:
        while True:
            if not server.alive():
                code = server.watchdog.returncode
                last = _last_log_line(server.log_path)
                raise ServerStartError(
                    f"endpoint {name!r}: its server exited (code {code}) before answering"
                    + (f": {last}" if last else "")
                    + f" {where}"
                )
            if answers(probe, endpoint.api_key()):
                break
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"endpoint {name!r}: its server did not answer at {probe} within "
                    f"{spec.startup_timeout_s:g} s (server.startup_timeout_s) {where}"
                )
            status.update(f"{label} … {time.monotonic() - started:.0f} s (log: {server.log_path})")
            time.sleep(0.25)
    console.print(
        f"[dim]server of endpoint {printable(name)} up at {server.base_url} in {time.monotonic() - started:.1f} s "
        f"(log: {server.log_path})[/]",
        highlight=False,
        soft_wrap=True,
    )


@dataclass
class ServerLease:
    """A hub's hold on a managed server: where to send requests; `release` when the hub closes."""

    pool: ServerPool
    key: str
    url: str
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self.key)


class ServerPool:
    """The managed servers of this process, one per configured base_url, counted by the hubs using them."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._servers: dict[str, ManagedServer] = {}
        self._sessions = 0
        self._atexit = False

    def acquire(
        self, endpoint_name: str, endpoint: Endpoint, log_dir: Path | None, console: Console | None = None
    ) -> ServerLease | None:
        """Make sure the endpoint's server is up; a lease on it, or None when the endpoint is served by
        someone else (no `server` section, or a server already answering at the configured base_url)."""
        spec = endpoint.server
        if spec is None:
            return None
        key = endpoint.base_url.rstrip("/")
        with self._lock:
            server = self._servers.get(key)
            if server is not None and not server.alive():
                server.stop()
                del self._servers[key]
                server = None
            if server is None:
                if answers(health_url(spec, key), endpoint.api_key()):
                    (console or Console(stderr=True)).print(
                        f"[dim]endpoint {printable(endpoint_name)}: a server already answers at {key}, used as is[/]",
                        highlight=False,
                        soft_wrap=True,
                    )
                    return None
                server = start_server(endpoint_name, endpoint, log_dir, console)
                self._servers[key] = server
                if not self._atexit:
                    atexit.register(self.stop_all)
                    self._atexit = True
            server.refs += 1
            return ServerLease(self, key, server.base_url)

    def release(self, key: str) -> None:
        with self._lock:
            server = self._servers.get(key)
            if server is None:
                return
            server.refs -= 1
            if server.refs <= 0 and self._sessions == 0:
                del self._servers[key]
                server.stop()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Keep servers started inside this block running until it ends (`siuo run`: one server for all
        stages), then stop those no hub holds any more."""
        with self._lock:
            self._sessions += 1
        try:
            yield
        finally:
            with self._lock:
                self._sessions -= 1
                if self._sessions == 0:
                    for key, server in list(self._servers.items()):
                        if server.refs <= 0:
                            del self._servers[key]
                            server.stop()

    def running(self) -> dict[str, ManagedServer]:
        """The servers up now, by configured base_url."""
        with self._lock:
            return dict(self._servers)

    def stop_all(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()


SERVERS = ServerPool()
"""The process's managed servers (one process, one pool: every hub of a run shares them)."""
