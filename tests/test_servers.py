"""Managed local servers (generator/models/servers.py): an endpoint with a `server` section is started on
first use, waited for, logged into the run folder and stopped on every way out, with its whole process
group, even when the process that started it is killed with SIGKILL.

The server in these tests is the loopback fake (`python -m generator.testing.fake_openai --port {port}`),
wrapped by a small script that also spawns a child of its own (as the SmolLM2 launcher spawns llama.cpp)
so that "the whole group is gone" is tested, not just "the leader is gone".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.config import ConfigError, ServerSettings, settings_from_dict
from generator.models import ModelHub, user_message
from generator.models.servers import SERVERS, ServerStartError, health_url, served_url
from generator.store import RunStore

SERVER_SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from pathlib import Path
    from generator.testing.fake_openai import FakeOpenAI

    port, pid_file = int(sys.argv[1]), Path(sys.argv[2])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a grandchild of siuo
    fake = FakeOpenAI(port=port)
    pid_file.write_text(f"{child.pid}")
    fake.serve_forever()
    """
)

PARENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from generator.config import settings_from_dict
    from generator.models import ModelHub, user_message
    from generator.models.servers import SERVERS

    mode, settings_json = sys.argv[1], sys.argv[2]
    settings = settings_from_dict(json.loads(settings_json))

    async def main():
        async with ModelHub(settings, cache=False) as hub:
            client = hub.chat("proposer")
            [reply] = await client.complete([user_message("ping")])
            server = next(iter(SERVERS.running().values()))
            print(json.dumps({"pid": server.pid, "reply": reply.text}), flush=True)
            if mode == "exception":
                raise RuntimeError("a stage failed")
            if mode in ("sigint", "sigterm", "sigkill"):
                while True:
                    await asyncio.sleep(0.1)

    asyncio.run(main())
    """
)


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _wait_group_gone(pgid: int, timeout: float = 15.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _endpoint(tmp_path: Path, port: int = 0, **server) -> dict:
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    return {
        "base_url": f"http://127.0.0.1:{port or _free_port()}/v1",
        "model": "fake-model",
        "timeout_s": 5,
        "outage_patience_s": 0,
        "server": {
            "command": ["{python}", str(script), "{port}", str(tmp_path / "child.pid")],
            "startup_timeout_s": 60,
            "stop_timeout_s": 3,
            **server,
        },
    }


def _settings(tmp_path: Path, endpoint: dict):
    return settings_from_dict(
        {"endpoints": {"local": endpoint}, "roles": {"proposer": "local"}, "cache": {"enabled": False}}
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _ask(hub: ModelHub) -> str:
    [reply] = await hub.chat("proposer").complete([user_message("hello")])
    return reply.text


@pytest.fixture(autouse=True)
def _no_server_left():
    yield
    leftover = SERVERS.running()
    SERVERS.stop_all()
    assert not leftover, f"a managed server outlived its test: {leftover}"


# -- config -----------------------------------------------------------------------------------------------


def test_server_section_needs_one_way_to_start_and_a_port_placeholder(tmp_path):
    base = {"base_url": "http://127.0.0.1:8080/v1", "model": "m"}
    with pytest.raises(ConfigError, match=r"endpoints\.e\.server\.command.*\{port\}"):
        settings_from_dict({"endpoints": {"e": {**base, "server": {"command": ["vllm", "serve", "x"]}}}})
    with pytest.raises(ConfigError, match="exactly one of `command`"):
        settings_from_dict({"endpoints": {"e": {**base, "server": {"builtin": "smollm2", "command": ["a", "{port}"]}}}})
    with pytest.raises(ConfigError, match="exactly one of `command`"):
        settings_from_dict({"endpoints": {"e": {**base, "server": {}}}})
    for secret in (["--api-key", "sk-123"], ["--hf-token=hf_abc"]):
        server = {"command": ["vllm", "serve", "m", "--port", "{port}", *secret]}
        with pytest.raises(ConfigError, match=r"endpoints\.e\.server\.command: a secret follows --(api-key|hf-token)"):
            settings_from_dict({"endpoints": {"e": {**base, "server": server}}})
    ok = {"command": ["vllm", "serve", "m", "--port", "{port}", "--max-tokens", "9"], "health_url": "/health"}
    assert (
        settings_from_dict({"endpoints": {"e": {**base, "server": ok}}}).endpoints["e"].server.health_url == "/health"
    )


def test_health_url_is_the_models_list_a_path_on_the_server_or_a_url():
    spec = ServerSettings(command=["s", "{port}"])
    assert health_url(spec, "http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/v1/models"
    spec = ServerSettings(command=["s", "{port}"], health_url="/health")
    assert health_url(spec, "http://127.0.0.1:41234/v1") == "http://127.0.0.1:41234/health"
    spec = ServerSettings(command=["s", "{port}"], health_url="http://127.0.0.1:{port}/ready")
    assert health_url(spec, "http://127.0.0.1:41234/v1") == "http://127.0.0.1:41234/ready"
    assert served_url("http://localhost:8080/v1/", 5000) == "http://127.0.0.1:5000/v1"


# -- start, health wait, log, stop --------------------------------------------------------------------------


@pytest.mark.slow
def test_managed_server_starts_answers_logs_into_the_run_and_stops_with_its_group(tmp_path):
    settings = _settings(tmp_path, _endpoint(tmp_path))
    store = RunStore.open("r", root=tmp_path / "outputs")
    configured = settings.endpoints["local"].base_url

    async def main() -> tuple[str, int, str, str]:
        async with ModelHub(settings, store=store, cache=False) as hub:
            text = await _ask(hub)
            [server] = SERVERS.running().values()
            rt = hub.runtime("local")
            return text, server.pid, rt.base_url, rt.serve_url

    text, pid, identity, served = asyncio.run(main())
    assert text == "echo: hello"  # the fake's default reply: the request really reached the started server
    assert identity == configured.rstrip("/") and served.startswith(
        "http://127.0.0.1:"
    )  # cache keys keep the config's URL
    log = (store.path / "servers" / "local.log").read_text()
    assert "starting:" in log and "server stopped" in log
    assert not _wait_group_gone(pid), "the server's process group outlived the hub"
    assert not SERVERS.running()


@pytest.mark.slow
def test_busy_configured_port_moves_the_server_to_a_free_one(tmp_path):
    with socket.socket() as busy:  # something else listens on the configured port and never answers
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = _settings(tmp_path, _endpoint(tmp_path, port=port))

        async def main() -> tuple[str, str]:
            async with ModelHub(settings, cache=False) as hub:
                return await _ask(hub), hub.runtime("local").serve_url

        text, served = asyncio.run(main())
    assert text == "echo: hello"
    assert served.startswith("http://127.0.0.1:") and not served.startswith(f"http://127.0.0.1:{port}/")


def test_an_endpoint_already_up_is_used_as_is_never_started(tmp_path, fake_openai):
    marker = tmp_path / "started"
    endpoint = {
        "base_url": fake_openai.base_url,
        "model": "m",
        "server": {"command": ["{python}", "-c", f"open({str(marker)!r}, 'w')", "{port}"], "startup_timeout_s": 5},
    }
    settings = _settings(tmp_path, endpoint)

    async def main() -> tuple[str, str]:
        async with ModelHub(settings, cache=False) as hub:
            return await _ask(hub), hub.runtime("local").serve_url

    text, served = asyncio.run(main())
    assert text == "echo: hello" and served == fake_openai.base_url
    assert fake_openai.hits_by_path["/v1/models"] == 1  # asked once whether it is up, then used
    assert not marker.exists() and not SERVERS.running()


@pytest.mark.slow
def test_one_server_serves_every_hub_of_a_session_and_stops_at_its_end(tmp_path):
    settings = _settings(tmp_path, _endpoint(tmp_path))

    async def one_stage() -> int:
        async with ModelHub(settings, cache=False) as hub:
            await _ask(hub)
            return next(iter(SERVERS.running().values())).pid

    with SERVERS.session():
        first = asyncio.run(one_stage())
        second = asyncio.run(one_stage())
        assert first == second and _group_members(first)  # still up between stages
    assert not SERVERS.running() and not _wait_group_gone(first)


# -- a server that never comes up ---------------------------------------------------------------------------


def _run_config(tmp_path: Path, endpoint: dict) -> Path:
    import tomli_w

    config = {
        "pipeline": {"run": "r", "stages": ["propose"], "domains": "privacy-violation"},
        "endpoints": {"local": endpoint},
        "roles": {"proposer": "local"},
        "propose": {"per_domain": 1},
        "cache": {"path": str(tmp_path / "cache.sqlite")},
    }
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.mark.slow
def test_a_server_that_never_answers_is_one_line_error_exit_2_and_gone(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    silent = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('loading…', flush=True); time.sleep(600)"
    endpoint = {
        "base_url": f"http://127.0.0.1:{_free_port()}/v1",
        "model": "m",
        "server": {"command": ["{python}", "-c", silent, "{port}"], "startup_timeout_s": 2, "stop_timeout_s": 2},
    }
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    result = CliRunner().invoke(app, ["run", "--config", str(_run_config(tmp_path, endpoint))])
    assert result.exit_code == 2, result.output
    log = tmp_path / "outputs" / "r" / "servers" / "local.log"
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "endpoint 'local'" in line and "did not answer" in line and "within 2 s" in line
    assert str(log) in result.output.replace("\n", "")  # the log path is named (rich may wrap long lines)
    assert "Traceback" not in result.output
    assert "loading…" in log.read_text()
    pid = int(pid_file.read_text())
    assert not _wait_group_gone(pid, timeout=5)
    assert not SERVERS.running()


def test_a_server_that_exits_names_its_exit_code_and_last_log_line(tmp_path):
    crash = "import sys; print('error: no such model file', flush=True); sys.exit(3)"
    endpoint = {
        "base_url": f"http://127.0.0.1:{_free_port()}/v1",
        "model": "m",
        "server": {"command": ["{python}", "-c", crash, "{port}"], "startup_timeout_s": 30},
    }
    settings = _settings(tmp_path, endpoint)

    async def main() -> None:
        async with ModelHub(settings, cache=False) as hub:
            hub.chat("proposer")

    with pytest.raises(ServerStartError, match=r"exited \(code 3\) before answering: error: no such model file"):
        asyncio.run(main())
    assert not SERVERS.running()


def test_a_command_that_does_not_exist_is_a_clear_error(tmp_path):
    endpoint = {
        "base_url": f"http://127.0.0.1:{_free_port()}/v1",
        "model": "m",
        "server": {"command": [str(tmp_path / "no-such-server"), "--port", "{port}"]},
    }
    with pytest.raises(ServerStartError, match=r"cannot start its server: .*no-such-server.*\(log: "):
        asyncio.run(_close_after_chat(_settings(tmp_path, endpoint)))


async def _close_after_chat(settings) -> None:
    async with ModelHub(settings, cache=False) as hub:
        hub.chat("proposer")


# -- every way out of the process that started it ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["normal", "exception", "sigint", "sigterm", "sigkill"])
def test_the_server_and_its_children_never_outlive_the_process_that_started_it(tmp_path, how):
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(PARENT_SCRIPT)
    config = {"endpoints": {"local": _endpoint(tmp_path)}, "roles": {"proposer": "local"}, "cache": {"enabled": False}}
    parent = subprocess.Popen(
        [sys.executable, str(parent_script), how, json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        hello = json.loads(parent.stdout.readline() or "{}")
        assert hello.get("reply") == "echo: ping", parent.stderr.read() if parent.poll() is not None else hello
        pid = hello["pid"]
        child = int((tmp_path / "child.pid").read_text())
        assert psutil.pid_exists(child) and os.getpgid(child) == pid  # the server's own child, in its group
        if how in ("sigint", "sigterm", "sigkill"):
            parent.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}[how])
        parent.wait(timeout=30)
        assert not _wait_group_gone(pid, timeout=15), f"server group {pid} outlived its parent ({how})"
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        if how == "sigkill":
            assert parent.returncode == -signal.SIGKILL
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        parent.stderr.close()
