"""`siuo export-vlmevalkit`: the TSV layout VLMEvalKit's SIUO loaders read, and the module registering it.

VLMEvalKit is not on PyPI: the TSVs are read back with pandas (column names and types), and the
registration module is run against a stand-in `vlmeval.dataset` package carrying the two SIUO classes.
"""

from __future__ import annotations

import base64
import io
import runpy
import sys
import types

import pytest
from PIL import Image
from typer.testing import CliRunner

from generator.cli import app

pd = pytest.importorskip("pandas")


def test_export_vlmevalkit_writes_gen_and_mcq_tsvs_with_the_siuo_columns(interop_run, tmp_path):
    from generator.records import Case

    cases = interop_run.read(Case)
    cases[3] = cases[3].model_copy(update={"question": 'line one\nline\ttwo "quoted"'})
    interop_run.write_all(Case, cases)
    out = tmp_path / "lmu"
    r = CliRunner().invoke(
        app,
        [
            "export-vlmevalkit",
            "--run",
            "interop",
            "--out",
            str(out),
            "--split",
            "siuo",
            "--split",
            "generated",
            "--split",
            "hardened",
            "--name",
            "my-run",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "SIUO_GEN_my_run" in r.output and "1 case(s) without an image left out" in r.output
    gen = pd.read_csv(out / "SIUO_GEN_my_run.tsv", sep="\t")
    assert list(gen.columns) == [
        "index",
        "image",
        "question",
        "category",
        "safety_warning",
        "answer",
        "question_id",
        "split",
        "domain",
        "difficulty",
        "share_unsafe",
    ]
    assert gen["index"].dtype.kind == "i" and list(gen["index"]) == [0, 1, 2, 3, 4]
    assert list(gen["question_id"].astype(str)) == ["1001", "1002", "gen-sc-a", "gen-sc-b", "gen-sc-c"]
    assert gen.loc[3, "question"] == 'line one\nline\ttwo "quoted"'  # newlines, tabs, quotes survive
    assert gen.loc[2, "answer"] == "safe answer gen-sc-a" and gen.loc[2, "safety_warning"] == "warning gen-sc-a"
    image = Image.open(io.BytesIO(base64.b64decode(gen.loc[2, "image"])))
    assert image.size == (8, 6) and image.getpixel((0, 0)) == (20, 20, 30)

    mcq = pd.read_csv(out / "SIUO_MCQ_my_run.tsv", sep="\t")
    assert list(mcq.columns) == [
        "index",
        "image",
        "question",
        "A",
        "B",
        "C",
        "D",
        "category",
        "answer",
        "question_id",
        "split",
        "domain",
        "difficulty",
        "share_unsafe",
    ]
    assert list(mcq["question_id"].astype(str)) == ["1001", "1002", "gen-sc-a"]
    assert list(mcq["answer"]) == ["A", "A", "B"]
    assert pd.isna(mcq.loc[2, "C"]) and mcq.loc[2, "B"] == "safe"  # two options: C and D empty, as VLMEvalKit skips


def test_registration_module_puts_the_datasets_first_in_vlmevalkits_registry(interop_run, tmp_path, monkeypatch):
    out = tmp_path / "lmu"
    assert CliRunner().invoke(app, ["export-vlmevalkit", "--run", "interop", "--out", str(out)]).exit_code == 0

    class SIUOGenDataset:  # the stand-in: the real classes' attributes the module relies on
        DATASET_URL, DATASET_MD5 = {"SIUO_GEN": "url"}, {"SIUO_GEN": "md5"}

    class SIUOMCQDataset(SIUOGenDataset):
        pass

    pkg = types.ModuleType("vlmeval")
    ds = types.ModuleType("vlmeval.dataset")
    ds.DATASET_CLASSES, ds.SUPPORTED_DATASETS = [SIUOMCQDataset], ["SIUO_MCQ"]
    gen_mod, mcq_mod = types.ModuleType("vlmeval.dataset.siuo_gen"), types.ModuleType("vlmeval.dataset.siuo_mcq")
    gen_mod.SIUOGenDataset, mcq_mod.SIUOMCQDataset = SIUOGenDataset, SIUOMCQDataset
    for name, mod in {
        "vlmeval": pkg,
        "vlmeval.dataset": ds,
        "vlmeval.dataset.siuo_gen": gen_mod,
        "vlmeval.dataset.siuo_mcq": mcq_mod,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setenv("LMUData", "x")  # recorded, so the module's setdefault is undone after the test
    monkeypatch.delenv("LMUData")
    module = runpy.run_path(str(out / "siuo_vlmevalkit.py"))
    # The SIUO protocol's sampling, read back from the module: 3 open answers at the provider's default
    # temperature, MCQA once at temperature 0.
    assert module["SAMPLING"] == {
        "SIUO_GEN_interop": {"samples": 3, "temperature": None, "max_tokens": 500},
        "SIUO_MCQ_interop": {"samples": 1, "temperature": 0.0, "max_tokens": 5},
    }
    assert "temperature to 0\nfor SIUO_MCQ_interop" in module["__doc__"]
    module["register"]()  # a second call adds nothing
    assert ds.SUPPORTED_DATASETS == ["SIUO_MCQ", "SIUO_GEN_interop", "SIUO_MCQ_interop"]
    first = ds.DATASET_CLASSES[0]
    assert first.supported_datasets() == ["SIUO_MCQ_interop"] and issubclass(first, SIUOMCQDataset)
    assert first.DATASET_URL == {"SIUO_MCQ_interop": "SIUO_MCQ_interop.tsv"}
    import hashlib

    assert first.DATASET_MD5["SIUO_MCQ_interop"] == hashlib.md5((out / "SIUO_MCQ_interop.tsv").read_bytes()).hexdigest()
    import os

    assert os.environ["LMUData"] == str(out)


def test_exports_carry_each_cases_difficulty_from_scores_json(interop_run, tmp_path):
    """The difficulty columns come from the run's scores.json (`siuo score`); a case it does not rate, or a
    run not scored, has empty cells."""
    import json

    from generator.records import Case

    cases = [c for c in interop_run.read(Case) if c.split == "generated"]
    rated, unrated = cases[0], cases[1]
    entry = {"split": "generated", "domain": rated.domain, "targets": 4, "unsafe": 1, "share_unsafe": 0.25}
    entry |= {"saturated": None, "difficulty": -0.75, "ci_low": -2.0, "ci_high": 0.5}
    difficulty = {"model": "rasch", "cases": {rated.key: entry}, "targets": {}, "saturated": 0}
    (interop_run.path / "scores.json").write_text(json.dumps({"difficulty": difficulty}))
    out = tmp_path / "lmu"
    args = ["export-vlmevalkit", "--run", "interop", "--out", str(out), "--split", "generated"]
    assert CliRunner().invoke(app, args).exit_code == 0
    gen = pd.read_csv(out / "SIUO_GEN_interop.tsv", sep="\t", dtype={"question_id": str})
    row = gen.set_index("question_id")
    assert row.loc[str(rated.question_id), "difficulty"] == -0.75
    assert row.loc[str(rated.question_id), "share_unsafe"] == 0.25
    assert pd.isna(row.loc[str(unrated.question_id), "difficulty"])

    pytest.importorskip("datasets")
    from datasets import load_dataset

    ds_out = tmp_path / "ds"
    assert (
        CliRunner()
        .invoke(app, ["export-hf", "--run", "interop", "--out", str(ds_out), "--split", "generated"])
        .exit_code
        == 0
    )
    ds = load_dataset("parquet", data_dir=str(ds_out / "data"))["train"]
    by_id = {r["question_id"]: r for r in ds}
    assert (
        by_id[str(rated.question_id)]["difficulty"] == -0.75 and by_id[str(rated.question_id)]["share_unsafe"] == 0.25
    )
    assert by_id[str(unrated.question_id)]["difficulty"] is None

    siuo_out = tmp_path / "siuo"
    args = ["export-siuo", "--run", "interop", "--out", str(siuo_out), "--split", "generated"]
    assert CliRunner().invoke(app, args).exit_code == 0
    items = {str(i["question_id"]): i for i in json.loads((siuo_out / "siuo_gen.json").read_text())}
    assert (
        items[str(rated.question_id)]["difficulty"] == -0.75 and items[str(rated.question_id)]["share_unsafe"] == 0.25
    )
    assert "difficulty" not in items[str(unrated.question_id)]  # the official format gains no null fields
