"""Nothing a crash or a second process can break: atomic output files, one writer per run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.records import Case
from generator.review.sheet import write_review_sheet
from generator.store import TMP_SUFFIX, RunLockedError, RunStore, atomic_writer

REPO = Path(__file__).resolve().parents[1]


def _case(i: int) -> Case:
    return Case(
        question_id=f"gen-{i}",
        image=f"{i}.png",
        image_path=f"images/{i}.png",
        question="Should I jump?",
        category="self-harm",
        domain="self-harm",
        safety_warning="w",
        hazard="h",
        reference_answer="Please reach out for help.",
        split="generated",
    )


def _python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Atomic outputs
# ----------------------------------------------------------------------------------------------------


@pytest.fixture()
def no_in_place_writes(monkeypatch):
    """Fail if an output file is opened for writing under its own name (a kill would truncate it)."""
    real_open = io.open
    watched = {"report.html", "report.md", "sheet.html", "siuo.toml"}

    def guarded(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name in watched and any(c in mode for c in "wax"):
            raise AssertionError(f"{file} opened in place with mode {mode!r}")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded)
    monkeypatch.setattr("builtins.open", guarded)


def test_report_review_sheet_and_config_are_never_written_in_place(tmp_path, monkeypatch, no_in_place_writes):
    from generator.config import write_starter_config
    from generator.evaluate import report as report_mod

    store = RunStore.open("r", root=tmp_path)
    store.write_all(Case, [_case(0)])
    assert write_review_sheet(store, tmp_path / "sheet.html") == 1
    assert "Review sheet" in (tmp_path / "sheet.html").read_text()

    monkeypatch.setattr(report_mod, "_scores_are_stale", lambda store: False)
    monkeypatch.setattr(report_mod, "load_scores", lambda store: {})
    monkeypatch.setattr(report_mod, "load_examples", lambda store, scores: [])
    monkeypatch.setattr(report_mod, "render_markdown", lambda *a: "# md")
    monkeypatch.setattr(report_mod, "render_html", lambda *a: "<html>")
    md, html = report_mod.report(store)
    assert md.read_text() == "# md" and html.read_text() == "<html>"

    write_starter_config("offline", tmp_path / "siuo.toml")
    assert (tmp_path / "siuo.toml").read_text().strip()
    assert not list(tmp_path.rglob(f"*{TMP_SUFFIX}"))


def test_a_killed_write_keeps_the_old_file_and_the_next_writer_removes_the_temp(tmp_path):
    store = RunStore.open("r", root=tmp_path)
    target = store.path / "report.html"
    target.write_text("the previous good report")
    proc = _python(
        "import os, sys\n"
        "from generator.store import atomic_writer\n"
        f"with atomic_writer({str(target)!r}) as fh:\n"
        "    fh.write('half a new rep'); fh.flush()\n"
        "    os._exit(9)  # killed mid-write\n"
    )
    assert proc.wait(timeout=60) == 9
    assert target.read_text() == "the previous good report"
    leftovers = list(store.path.glob(f".*{TMP_SUFFIX}"))
    assert len(leftovers) == 1
    with store.writing():
        assert not leftovers[0].exists()


def test_a_failed_write_leaves_no_temp_and_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write("new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


# ----------------------------------------------------------------------------------------------------
# The run lock
# ----------------------------------------------------------------------------------------------------


def _hold_lock(root: Path, name: str, seconds: float) -> subprocess.Popen:
    proc = _python(
        "import sys, time\n"
        "from pathlib import Path\nfrom generator.store import RunStore\n"
        f"with RunStore.open({name!r}, root=Path({str(root)!r})).writing():\n"
        "    print('locked', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path))
    store = RunStore.open("r", root=tmp_path)
    store.write_all(Case, [_case(0)])
    holder = _hold_lock(tmp_path, "r", 30)
    try:
        with pytest.raises(RunLockedError, match=f"PID {holder.pid}"):
            with store.writing():
                pass
        t0 = time.monotonic()
        result = CliRunner().invoke(app, ["score", "--run", "r"])
        assert result.exit_code == 2 and f"PID {holder.pid}" in result.output, result.output
        assert time.monotonic() - t0 < 10
        # A reader needs no lock.
        result = CliRunner().invoke(app, ["stats", "--run", "r"])
        assert result.exit_code == 0, result.output
    finally:
        holder.kill()
        holder.wait()
    # The OS released the killed holder's lock: the run is writable again.
    with store.writing():
        assert (store.path / ".lock.pid").read_text().strip() == str(os.getpid())
    assert not (store.path / ".lock.pid").exists()


def test_wait_queues_behind_the_holder(tmp_path):
    store = RunStore.open("r", root=tmp_path)
    holder = _hold_lock(tmp_path, "r", 1.5)
    t0 = time.monotonic()
    with store.writing(wait=True):
        waited = time.monotonic() - t0
    assert waited > 1.0  # the holder kept it 1.5 s after saying "locked"
    holder.wait()


# ----------------------------------------------------------------------------------------------------
# One line per key
# ----------------------------------------------------------------------------------------------------


def test_put_replaces_a_key_in_place_and_appends_a_new_one(tmp_path):
    from generator.records import Failure

    store = RunStore.open("r", root=tmp_path)
    store.put(Failure(stage="answer", work_key="a", reason="first"))
    store.put(Failure(stage="answer", work_key="b", reason="other"))
    store.put(Failure(stage="answer", work_key="a", reason="failed again"))
    lines = store.file_for(Failure).read_text().splitlines()
    assert [f.reason for f in store.iter_records(Failure)] == ["failed again", "other"] and len(lines) == 2


def test_put_reads_a_record_file_once_not_once_per_record(tmp_path, monkeypatch):
    """`put` keeps the file's keys between calls (re-reading per call made a run's failures O(n²)),
    and still sees a line that another store appended meanwhile."""
    from generator.records import Failure

    store = RunStore.open("r", root=tmp_path)
    reads: list[str] = []
    real = RunStore.iter_records

    def counting(self, record_type):
        reads.append(record_type.__name__)
        return real(self, record_type)

    monkeypatch.setattr(RunStore, "iter_records", counting)
    for i in range(200):
        store.put(Failure(stage="judge", work_key=f"k{i}", reason="no verdict"))
    assert reads == ["Failure"]
    RunStore.open("r", root=tmp_path).append(Failure(stage="judge", work_key="other", reason="x"))
    store.put(Failure(stage="judge", work_key="other", reason="replaced, not duplicated"))
    lines = store.file_for(Failure).read_text().splitlines()
    assert len(lines) == 201 and json.loads(lines[-1])["reason"] == "replaced, not duplicated"
