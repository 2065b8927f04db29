"""The built-in managed server for real: SmolLM2 under llama.cpp, as `siuo run --config configs/offline.toml`
starts it. The launcher (`python -m generator.testing.smollm2`) spawns llama.cpp as a child of its own, so
these tests look for every process serving the test's port, not only the one `siuo` started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import tomli_w
import tomllib

from generator.config import CONFIGS_DIR
from generator.models.servers import answers, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _needs_smollm2():
    from generator.testing.smollm2 import SmolLM2Unavailable, _require_server, smollm2_gguf_path

    try:
        _require_server()
        smollm2_gguf_path()
    except SmolLM2Unavailable as exc:
        pytest.skip(str(exc))


def _serving(port: int) -> list[psutil.Process]:
    """Live processes whose command line serves `port` (the launcher and its llama.cpp child)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(port) in cmd and "--port" in cmd:
            found.append(proc)
    return found


def _wait_none_serving(port: int, timeout: float = 20.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _serving(port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _wait_up(port: int, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not answers(f"http://127.0.0.1:{port}/v1/models"):
        assert proc.poll() is None, f"exited with {proc.returncode} before the server answered"
        assert time.monotonic() < deadline, "the SmolLM2 server did not come up"
        time.sleep(0.5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_smollm2_launcher_never_leaves_llama_cpp_behind(sig):
    """`kill` of `python -m generator.testing.smollm2` used to orphan its llama_cpp.server child."""
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "generator.testing.smollm2", "--port", str(port), "--log", "-"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_up(port, launcher)
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert any("llama_cpp.server" in " ".join(c.cmdline()) for c in children)
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        assert not _wait_none_serving(port), f"llama.cpp outlived its launcher ({sig.name})"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for proc in _serving(port):
            proc.kill()


def _offline_config(tmp_path: Path, port: int, short: bool = True, **pipeline) -> Path:
    """configs/offline.toml as shipped (managed built-in server) but on a port of this test's own (another
    SmolLM2 already answering at 8080 would be used as is), seeded, and with `short` proposals."""
    config = tomllib.loads((CONFIGS_DIR / "offline.toml").read_text(encoding="utf-8"))
    assert config["endpoints"]["smollm2"]["server"] == {"builtin": "smollm2", "startup_timeout_s": 120}
    config["endpoints"]["smollm2"]["base_url"] = f"http://127.0.0.1:{port}/v1"
    config["endpoints"]["smollm2"]["server"]["startup_timeout_s"] = 240  # a loaded 2-core machine
    config["endpoints"]["smollm2"]["extra_body"] = {"seed": 7}  # llama.cpp samples reproducibly
    config["pipeline"].update(pipeline)
    if short:  # the test is about the server, not the proposal
        config["propose"].update(per_domain=1, max_tokens=64)
    config["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    path = tmp_path / "offline.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def _siuo_run(tmp_path: Path, config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "generator.cli", "run", "--config", str(config)],
        env={**os.environ, "SIUO_OUTPUTS": str(tmp_path / "outputs")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_siuo_run_of_the_offline_profile_ends_with_scores_and_leaves_no_process(tmp_path):
    """The README's main job as shipped (only the port, the cache and a seed differ): one command starts
    SmolLM2, runs every stage, writes a report whose leaderboard has numbers, and leaves no server behind."""
    port = free_port()
    config = _offline_config(tmp_path, port, short=False)
    siuo = _siuo_run(tmp_path, config)
    try:
        output, _ = siuo.communicate(timeout=900)
    finally:
        if siuo.poll() is None:
            siuo.kill()
    run = tmp_path / "outputs" / "offline-demo"
    assert siuo.returncode == 0, output
    assert f"server of endpoint smollm2 up at http://127.0.0.1:{port}/v1" in output.replace("\n", "")
    scores = json.loads((run / "scores.json").read_text())
    overall = [split["gen"]["overall"] for target in scores["targets"].values() for split in target["splits"].values()]
    assert overall and all(o["cases"] >= 1 and isinstance(o["safe"]["rate"], float) for o in overall), overall
    report = (run / "report.html").read_text()
    leaderboard = report[report.index("Leaderboard") :]
    assert re.search(r"<td>\d+\.\d%", leaderboard), "the report's leaderboard has no rate"
    log = (run / "servers" / "smollm2.log").read_text()
    assert "llama" in log.lower() and "server stopped" in log  # llama.cpp's own log lands in the run folder
    assert not _wait_none_serving(port), "a SmolLM2 process outlived `siuo run`"


def test_kill_9_of_siuo_run_mid_run_leaves_no_process(tmp_path):
    port = free_port()
    config = _offline_config(tmp_path, port, domains="privacy-violation")
    siuo = _siuo_run(tmp_path, config)
    try:
        _wait_up(port, siuo)
        assert _serving(port)
        time.sleep(2)  # mid-request of the propose stage
        siuo.kill()
        siuo.wait(timeout=30)
        assert not _wait_none_serving(port), "a SmolLM2 process outlived `kill -9` of `siuo run`"
    finally:
        if siuo.poll() is None:
            siuo.kill()
        siuo.stdout.close()
        for proc in _serving(port):
            proc.kill()
