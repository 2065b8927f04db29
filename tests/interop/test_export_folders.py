"""Every export verb writes only what it owns: a folder it did not write is refused (unless --force), a run's
input is never written over, a re-export removes only its own earlier files; `export-hf` switches a previous
export to the new one whole whenever it is killed, and `load_dataset` never returns another export's rows."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from generator.cli import app
from generator.interop.export_folder import MARKER
from generator.interop.siuo import export_siuo
from generator.records import Case, Judgment, Response
from generator.store import RunStore

VERBS = ["export-hf", "export-siuo", "export-vlmevalkit", "export-lmms-eval"]


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("verb", VERBS)
def test_every_export_refuses_a_folder_it_did_not_write_and_with_force_keeps_what_is_there(interop_run, tmp_path, verb):
    if verb in ("export-hf", "export-lmms-eval"):
        pytest.importorskip("datasets")
    out = tmp_path / "mine"
    (out / "data" / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "data" / "mine.parquet").write_bytes(b"not a shard")
    (out / "data" / "sub" / "keep.txt").write_text("keep")
    (out / "README.md").write_text("my readme")
    before = _snapshot(out)

    r = _invoke(verb, "--run", "interop", "--out", out)
    assert r.exit_code == 2, r.output
    assert "not an earlier" in r.output and "--force" in r.output and "Traceback" not in r.output
    assert _snapshot(out) == before  # nothing written, nothing deleted

    r = _invoke(verb, "--run", "interop", "--out", out, "--force")
    assert r.exit_code == 0, r.output
    after = _snapshot(out)
    for name, data in before.items():  # every file of theirs still there (README.md is one of ours for export-hf)
        if not (verb == "export-hf" and name == "README.md"):
            assert after[name] == data, name
    assert json.loads((out / MARKER).read_text())["kind"] == verb.removeprefix("export-")


def test_an_export_folder_of_another_kind_is_refused(interop_run, tmp_path):
    out = tmp_path / "x"
    assert _invoke("export-siuo", "--run", "interop", "--out", out).exit_code == 0
    r = _invoke("export-vlmevalkit", "--run", "interop", "--out", out)
    assert r.exit_code == 2 and "holds a `siuo` export" in r.output


def test_reexport_removes_only_its_own_stale_files_and_never_a_changed_one(interop_run, tmp_path):
    out = tmp_path / "x"
    assert _invoke("export-siuo", "--run", "interop", "--out", out).exit_code == 0
    assert (out / "siuo_mcqa.json").is_file()
    (out / "notes.txt").write_text("mine")
    # The hardened split has no MCQA case: the earlier siuo_mcqa.json goes (it would be read as this export's).
    r = _invoke("export-siuo", "--run", "interop", "--out", out, "--split", "hardened")
    assert r.exit_code == 0, r.output
    assert not (out / "siuo_mcqa.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert [i["question_id"] for i in json.loads((out / "siuo_gen.json").read_text())] == ["gen-sc-c"]

    (out / "siuo_gen.json").write_text("[] edited by hand")
    r = _invoke("export-siuo", "--run", "interop", "--out", out)
    assert r.exit_code == 2 and "changed since the last export" in r.output
    assert (out / "siuo_gen.json").read_text() == "[] edited by hand"


def test_export_siuo_never_writes_over_the_file_the_run_was_imported_from(tmp_path, monkeypatch):
    """The measured hole: --out at the folder of the source siuo_gen.json overwrote it (167 -> 164 items)."""
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    src = tmp_path / "official"
    src.mkdir()
    items = [
        {
            "question_id": i,
            "image": f"S-{i}.png",
            "question": f"q{i}",
            "category": "self-harm",
            "safety_warning": "w",
            "reference_answer": "r",
        }
        for i in range(3)
    ]
    (src / "siuo_gen.json").write_text(json.dumps(items))
    assert _invoke("import-siuo", "--gen", src / "siuo_gen.json", "--run", "off").exit_code == 0
    store = RunStore.open("off")
    store.write_all(Case, store.read(Case)[:2])  # the run now differs from the file
    original = (src / "siuo_gen.json").read_bytes()
    for extra in ([], ["--force"]):
        r = _invoke("export-siuo", "--run", "off", "--out", src, *extra)
        assert r.exit_code == 2, r.output
        assert (src / "siuo_gen.json").read_bytes() == original
    assert "input of the run" in r.output
    # A link to the input is the input.
    link_dir = tmp_path / "linked"
    link_dir.mkdir()
    (link_dir / "siuo_gen.json").symlink_to(src / "siuo_gen.json")
    r = _invoke("export-siuo", "--run", "off", "--out", link_dir, "--force")
    assert r.exit_code == 2 and (src / "siuo_gen.json").read_bytes() == original


def test_export_siuo_gives_all_failed_cases_the_published_invalid_value(interop_run, tmp_path):
    """The published scoring reads `safetyness` and `helpfulness` on every item; -1 is its invalid value."""
    cases = {c.question_id: c for c in interop_run.read(Case)}
    judged, failed = cases[1001], cases[1002]
    ok = Response(case_id=judged.key, target="m", model="m", sample=0, text="no")
    interop_run.append(ok)
    for k in range(3):
        interop_run.append(Response(case_id=failed.key, target="m", model="m", sample=k, error="HTTP 500"))
    for dim, verdict in (("safety", "safe"), ("effectiveness", "not")):
        interop_run.append(
            Judgment(
                response_key=ok.key,
                case_id=judged.key,
                target="m",
                sample=0,
                dimension=dim,
                judge="j",
                judge_model="j",
                verdict=verdict,
                raw=f"VERDICT: {verdict.upper()}",
            )
        )
    export_siuo(interop_run, tmp_path / "x", target="m")
    gen = json.loads((tmp_path / "x" / "siuo_gen.json").read_text())
    with_responses = [i for i in gen if "responses" in i]
    assert len(with_responses) == 2
    for item in with_responses:
        assert "safetyness" in item and "helpfulness" in item, item["question_id"]
        assert len(item["safetyness"]) == len(item["helpfulness"]) == len(item["responses"])
    by_id = {i["question_id"]: i for i in gen}
    assert by_id[1002]["safetyness"] == [-1, -1, -1] and by_id[1002]["helpfulness"] == [-1, -1, -1]
    assert by_id[1002]["response_status"] == ["failed"] * 3
    assert by_id[1001]["safetyness"][0] == 1 and by_id[1001]["helpfulness"][0] == 0


# ----------------------------------------------------------------------------------------------------
# export-hf: atomic replacement and no stale rows from the `datasets` cache
# ----------------------------------------------------------------------------------------------------


def _run_with(name: str, n: int, root: pathlib.Path) -> RunStore:
    """A run of `n` generated cases with images (ids `<name>-0` ...)."""
    store = RunStore.open(name, root=root)
    cases = []
    for i in range(n):
        Image.new("RGB", (4, 4), (i, 2 * i, 3)).save(store.images_dir / f"{name}-{i}.png")
        cases.append(
            Case(
                question_id=f"{name}-{i}",
                image=f"{name}-{i}.png",
                image_path=f"images/{name}-{i}.png",
                question=f"q {name} {i}",
                category="self-harm",
                domain="self-harm",
                safety_warning="w",
                hazard="h",
                reference_answer="r",
                split="generated",
                scenario_id=f"sc-{name}-{i}",
            )
        )
    store.write_all(Case, cases)
    return store


def _add_cases(store: RunStore, n: int) -> None:
    name = store.name
    cases = store.read(Case)
    for i in range(len(cases), len(cases) + n):
        Image.new("RGB", (4, 4), (i, 1, 1)).save(store.images_dir / f"{name}-{i}.png")
        cases.append(
            Case(
                question_id=f"{name}-{i}",
                image=f"{name}-{i}.png",
                image_path=f"images/{name}-{i}.png",
                question=f"q {name} {i}",
                category="self-harm",
                domain="self-harm",
                safety_warning="w",
                hazard="h",
                reference_answer="r",
                split="generated",
                scenario_id=f"sc-{name}-{i}",
            )
        )
    store.write_all(Case, cases)


def _loaded_ids(folder: pathlib.Path) -> list[str]:
    datasets = pytest.importorskip("datasets")
    return list(datasets.load_dataset(str(folder), split="generated")["question_id"])


def test_two_exports_in_folders_of_the_same_name_load_their_own_rows(tmp_path):
    """The measured hole: `load_dataset("b/hf")` returned run A's 10 rows (the cache knew the folder by name)."""
    from generator.interop.hf import export_hf

    pytest.importorskip("datasets")
    a, b = _run_with("ra", 10, tmp_path / "outputs"), _run_with("rb", 4, tmp_path / "outputs")
    export_hf(a, tmp_path / "a" / "hf", ("generated",))
    export_hf(b, tmp_path / "b" / "hf", ("generated",))
    assert _loaded_ids(tmp_path / "a" / "hf") == [f"ra-{i}" for i in range(10)]
    assert _loaded_ids(tmp_path / "b" / "hf") == [f"rb-{i}" for i in range(4)]
    _add_cases(b, 3)  # a re-export into the same folder after adding cases
    export_hf(b, tmp_path / "b" / "hf", ("generated",))
    assert _loaded_ids(tmp_path / "b" / "hf") == [f"rb-{i}" for i in range(7)]
    assert _loaded_ids(tmp_path / "a" / "hf") == [f"ra-{i}" for i in range(10)]
    card = (tmp_path / "b" / "hf" / "README.md").read_text()
    fingerprint = json.loads((tmp_path / "b" / "hf" / MARKER).read_text())["fingerprint"]
    assert f"data/generated-{fingerprint}-*" in card


class Killed(BaseException):
    """Stands for a kill: not an Exception, so no handler of the code under test can swallow it."""


def test_export_hf_killed_at_any_step_leaves_the_old_or_the_new_export_whole(tmp_path, monkeypatch):
    import generator.interop.hf as hf

    pytest.importorskip("datasets")
    store = _run_with("rk", 3, tmp_path / "outputs")
    out = tmp_path / "hf"
    hf.export_hf(store, out, ("generated",), max_shard_bytes=1)
    old = [f"rk-{i}" for i in range(3)]
    _add_cases(store, 2)
    new = [f"rk-{i}" for i in range(5)]
    (out / "notes.txt").write_text("mine")

    real = {"replace": os.replace, "unlink": pathlib.Path.unlink, "shard": hf._write_shard}
    calls = {"n": 0}
    seen = set()

    def failing(kind):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise Killed(kind)
            return real[kind](*args, **kwargs)

        return call

    monkeypatch.setattr(os, "replace", failing("replace"))
    monkeypatch.setattr(pathlib.Path, "unlink", failing("unlink"))
    monkeypatch.setattr(hf, "_write_shard", failing("shard"))
    for fail_at in range(1, 200):
        calls.update(n=0, fail_at=fail_at)
        try:
            hf.export_hf(store, out, ("generated",), max_shard_bytes=1)
        except Killed as kill:
            seen.add(str(kill))
            with monkeypatch.context() as m:  # the reader runs without the injected faults
                m.setattr(os, "replace", real["replace"])
                m.setattr(pathlib.Path, "unlink", real["unlink"])
                assert _loaded_ids(out) in (old, new), f"killed at call {fail_at} ({kill})"
            continue
        break
    else:
        pytest.fail("the export never finished")
    assert fail_at > 20 and seen == {"replace", "unlink", "shard"}  # kills tried at every step, of each kind
    assert _loaded_ids(out) == new and (out / "notes.txt").read_text() == "mine"
    # Nothing of the killed attempts is left behind: the shards on disk are the ones the card names.
    marker = json.loads((out / MARKER).read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "data").iterdir())
    assert on_disk == sorted(n for n in marker["files"] if n.startswith("data/"))


def test_a_marker_written_by_hand_cannot_steer_a_delete_outside_the_folder(interop_run, tmp_path):
    from generator.interop.export_folder import sha256_of

    out = tmp_path / "x"
    assert _invoke("export-siuo", "--run", "interop", "--out", out).exit_code == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    marker = json.loads((out / MARKER).read_text())
    marker["files"]["../victim.txt"] = sha256_of(victim)
    (out / MARKER).write_text(json.dumps(marker))
    r = _invoke("export-siuo", "--run", "interop", "--out", out)
    assert r.exit_code == 2 and "would leave the folder" in r.output
    assert victim.read_text() == "precious"
