"""`siuo export-hf`: a dataset `datasets.load_dataset(OUT)` opens with one split per run split, typed
features, parquet shards and a dataset card."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.interop.hf import export_hf, features
from generator.records import Case

datasets = pytest.importorskip("datasets")


def _card_yaml(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_export_hf_loads_with_one_split_per_run_split_and_typed_features(interop_run, tmp_path):
    out = tmp_path / "ds"
    r = CliRunner().invoke(
        app,
        [
            "export-hf",
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
            "--controls",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 10 cases (siuo: 2, generated: 2, hardened: 1, control: 5)" in r.output
    assert "1 case(s) without an image left out" in r.output
    fp = json.loads((out / ".siuo-export.json").read_text())["fingerprint"]
    assert len(fp) == 16 and sorted(p.name for p in (out / "data").iterdir()) == [
        f"control-{fp}-00000-of-00001.parquet",
        f"generated-{fp}-00000-of-00001.parquet",
        f"hardened-{fp}-00000-of-00001.parquet",
        f"siuo-{fp}-00000-of-00001.parquet",
    ]

    dd = datasets.load_dataset(str(out))
    assert set(dd) == {"siuo", "generated", "hardened", "control"}
    assert {k: len(v) for k, v in dd.items()} == {"siuo": 2, "generated": 2, "hardened": 1, "control": 5}
    gen = dd["generated"]
    assert gen.features == features()
    # Empty strings stay strings: parent_id is "" in every generated row and still a string column.
    assert gen.features["parent_id"].dtype == "string" and gen["parent_id"] == ["", ""]
    assert gen.features["image"].__class__.__name__ == "Image"
    first = gen[0]
    assert first["question_id"] == "gen-sc-a" and first["image"].size == (8, 6)
    assert first["image"].getpixel((0, 0)) == (20, 20, 30)
    assert first["options"] == ["no", "safe"] and first["answer"] == "B"
    assert first["image_source"] == "diffusers:tiny-sd"
    assert [c["check"] for c in first["checks"]] == ["alignment", "image_benign.clip"]
    assert first["checks"][0] == {
        "check": "alignment",
        "candidate": 0,
        "score": 0.31,
        "threshold": 0.25,
        "passed": True,
    }
    second = gen[1]
    assert second["options"] == [] and second["answer"] == "" and second["image_licence"] == "public domain"
    assert second["checks"][0]["passed"] is None  # not run is never a pass
    assert dd["hardened"][0]["parent_id"] == "sc-a" and dd["hardened"][0]["strategy"] == "remove_giveaway_words"
    assert dd["siuo"]["question_id"] == ["1001", "1002"] and dd["siuo"][0]["options"][0].startswith("I can't")
    control = dd["control"][0]
    assert control["question"] != "What next, 1001?" and control["hazard"] == "" and control["options"] == []

    meta, text = _card_yaml(out / "README.md")
    assert meta["license"] == "cc-by-nc-4.0"
    assert "visual-question-answering" in meta["task_categories"]
    assert meta["configs"][0]["data_files"][0] == {"split": "siuo", "path": f"data/siuo-{fp}-*"}
    for words in (
        "Content warning",
        "How the cases were made",
        "Checks that admitted them",
        "`alignment`",
        "0.25",
        "NOT RUN",
        "Evaluation protocol",
        "Intended use",
        "CC BY-NC 4.0",
    ):
        assert words in text, words


def test_export_hf_shards_by_image_bytes_and_replaces_an_earlier_export(interop_run, tmp_path):
    out = tmp_path / "ds"
    result = export_hf(interop_run, out, ("generated", "hardened"), max_shard_bytes=1)
    fp = result.fingerprint
    assert result.shards == [
        f"data/generated-{fp}-00000-of-00002.parquet",
        f"data/generated-{fp}-00001-of-00002.parquet",
        f"data/hardened-{fp}-00000-of-00001.parquet",
    ]
    second = export_hf(interop_run, out, ("generated",))  # a second export: no shard of the first one is left behind
    assert second.fingerprint != fp
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"generated-{second.fingerprint}-00000-of-00001.parquet"
    ]
    dd = datasets.load_dataset(str(out))
    assert list(dd) == ["generated"] and len(dd["generated"]) == 2


def test_export_hf_refuses_another_licence_for_official_cases_and_unknown_splits(interop_run, tmp_path):
    r = CliRunner().invoke(
        app,
        ["export-hf", "--run", "interop", "--out", str(tmp_path / "x"), "--split", "siuo", "--license", "cc-by-4.0"],
    )
    assert r.exit_code == 2 and "must keep that licence" in r.output
    r = CliRunner().invoke(app, ["export-hf", "--run", "interop", "--out", str(tmp_path / "x"), "--split", "train"])
    assert r.exit_code == 2 and "unknown split" in r.output
    meta, _ = _card_yaml(
        export_hf(interop_run, tmp_path / "y", ("generated",), license="cc-by-4.0").out_dir / "README.md"
    )
    assert meta["license"] == "cc-by-4.0"


def test_export_hf_refuses_options_it_cannot_keep_in_letter_order(interop_run, tmp_path):
    cases = interop_run.read(Case)
    cases[2] = cases[2].model_copy(update={"options": {"A": "x", "C": "y"}})
    interop_run.write_all(Case, cases)
    r = CliRunner().invoke(app, ["export-hf", "--run", "interop", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "gen-sc-a" in r.output and "not the letters" in r.output


def test_export_hf_writes_no_file_named_from_data(interop_run, tmp_path):
    """A case id written by hand cannot make export-hf write outside --out: no file is named from data."""
    cases = interop_run.read(Case)
    cases[2] = cases[2].model_copy(update={"question_id": "a/../../../escaped"})
    interop_run.write_all(Case, cases)
    out = tmp_path / "deep" / "ds"
    r = CliRunner().invoke(app, ["export-hf", "--run", "interop", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.rglob("escaped*"))
    assert datasets.load_dataset(str(out))["generated"][0]["question_id"] == "a/../../../escaped"


def test_export_without_the_interop_extra_is_one_line_saying_what_to_install(interop_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    r = CliRunner().invoke(app, ["export-hf", "--run", "interop", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and 'pip install -e ".[interop]"' in r.output and "Traceback" not in r.output


def test_the_card_counts_what_the_export_holds_cites_siuo_and_the_toolkit_and_parses(interop_run, tmp_path):
    """An export of the official cases alone names their real number (never SIUO's full 167); the card
    parses with huggingface_hub's own card parser and carries both citations."""
    from huggingface_hub import DatasetCard, DatasetCardData
    from huggingface_hub.repocard import metadata_load

    from generator import __version__

    official = export_hf(interop_run, tmp_path / "official", ("siuo",))
    card = DatasetCard.load(official.out_dir / "README.md")
    assert isinstance(card.data, DatasetCardData) and card.data.license == "cc-by-nc-4.0"
    assert card.data.size_categories == ["n<1K"] and card.data.configs[0]["data_files"][0]["split"] == "siuo"
    assert metadata_load(official.out_dir / "README.md")["license"] == "cc-by-nc-4.0"
    body = card.text
    assert "167" not in body
    assert "| `siuo` | 2 |" in body and "The `siuo` split holds 2 case(s) of the official SIUO set" in body
    assert "a high score on 2 cases" in body and "Domains: dangerous-behavior (1), self-harm (1)." in body
    assert "an LLM **proposes**" not in body and "Checks that admitted them" not in body  # none generated
    assert "The multiple-choice form (`options`, `answer`) is asked once at temperature 0." in body
    assert "## Citation" in body and "@article{wang2024siuo," in body and "arXiv:2406.15279" in body
    assert "Cross-Modality Safety Alignment" in body and "Wang, Siyin" in body
    assert "@misc{siuo_generator," in body and f"version {__version__}" in body
    assert body.count("```bibtex") == 2 and body.count("{") == body.count("}")

    hardened = DatasetCard.load(export_hf(interop_run, tmp_path / "hardened", ("hardened",)).out_dir / "README.md")
    assert "| `hardened` | 1 |" in hardened.text and "`siuo` split" not in hardened.text
    assert "The multiple-choice form" not in hardened.text  # the one hardened case has no options
    assert "@article{wang2024siuo," in hardened.text  # SIUO is cited for its design all the same
