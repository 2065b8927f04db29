"""Generated garbage thrown at the two doors a user's files come through: the official-format importer
and the config loader. Whatever arrives: a clear one-line error and exit 2 (or, for input that happens to
be valid, a normal import), never a traceback, and nothing written for a refused input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from generator.cli import app
from generator.interop.siuo import GEN_FIELDS
from generator.store import RunStore

_runs = itertools.count()
_slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# Items that look almost right: the official fields with values of any type, some left out.
_items = st.lists(st.fixed_dictionaries({}, optional={f: _json for f in GEN_FIELDS}), max_size=4)
_gen_file = (
    st.binary(max_size=200)
    | _json.map(lambda v: json.dumps(v).encode())
    | _items.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 300_000).map(lambda n: b"[" * n + b"]" * n)
)

_toml_line = st.sampled_from(
    [
        "[endpoints.e]",
        "[roles]",
        "[budget]",
        "[bench]",
        "[cache]",
        'base_url = "http://h/v1"',
        'model = "m"',
        "max_concurrency = 0",
        'extra_body = { api_key = "x" }',
        'judge = "e"',
        'judge = "nope"',
        "targets = [1]",
        "endpoints = 3",
        'api_key = "sk-123456789"',
        "max_cost_usd = -1",
        "= broken",
        'x = """',
        "a = [[[[",
    ]
) | st.text(max_size=40)
_config_file = st.binary(max_size=200) | st.lists(_toml_line, max_size=8).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
)


def _assert_clean(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert "error:" in result.output


@_slow
@given(content=_gen_file)
def test_importer_gives_a_clear_error_for_any_garbage(tmp_path: Path, monkeypatch, content: bytes):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    gen = tmp_path / "gen.json"
    gen.write_bytes(content)
    run = f"g{next(_runs)}"
    result = CliRunner().invoke(app, ["import-siuo", "--gen", str(gen), "--run", run])
    _assert_clean(result)
    if result.exit_code == 2:
        assert not (tmp_path / "outputs" / run).exists(), "a refused import wrote nothing"


@_slow
@given(content=_config_file)
def test_config_loader_gives_a_clear_error_for_any_garbage(tmp_path: Path, monkeypatch, content: bytes):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    config = tmp_path / "siuo.toml"
    config.write_bytes(content)
    store = RunStore.open(f"c{next(_runs)}")  # an empty run: a config that loads has nothing to send

    def written() -> dict:  # the run lock's own file is not output (a valid but empty config takes the lock)
        return {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file() and not p.name.startswith(".lock")}

    before = written()
    result = CliRunner().invoke(app, ["answer", "--config", str(config), "--run", store.name])
    _assert_clean(result)
    if result.exit_code == 2:
        assert written() == before, "a refused config wrote nothing"
