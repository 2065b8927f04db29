"""`siuo export-hf`: an imagefolder dataset (images + metadata.jsonl) of the chosen splits."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from generator.cli import app
from generator.records import Case
from generator.store import RunStore


def _case(qid, split, image_path):
    return Case(question_id=qid, image="x.png", image_path=image_path, question=f"q {qid}", category="morality",
                domain="morality", safety_warning="w", hazard="w", reference_answer="a", split=split,
                options={"A": "safe", "B": "unsafe"} if split == "generated" else None,
                correct_option="A" if split == "generated" else None)


def test_export_hf_writes_images_and_metadata_of_the_chosen_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    store = RunStore.open("hf")
    Image.new("RGB", (6, 6), (1, 2, 3)).save(store.images_dir / "a.png")
    Image.new("RGB", (6, 6), (4, 5, 6)).save(store.images_dir / "b.png")
    store.write_all(Case, [_case("gen-1", "generated", "images/a.png"), _case("gen-2", "hardened", "images/b.png"),
                           _case("gen-3", "generated", None), _case(1001, "siuo", "images/a.png")])
    out = tmp_path / "ds"
    r = CliRunner().invoke(app, ["export-hf", "--run", "hf", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 2 cases" in r.output and "1 case(s) without an image left out" in r.output
    rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
    assert [row["question_id"] for row in rows] == ["gen-1", "gen-2"]
    assert rows[0]["file_name"] == "generated/case-gen-1.png" and rows[0]["options"] == {"A": "safe", "B": "unsafe"}
    assert Image.open(out / rows[1]["file_name"]).getpixel((0, 0)) == (4, 5, 6)
    # The official split only when asked for; its integer ids become strings (one column type).
    r = CliRunner().invoke(app, ["export-hf", "--run", "hf", "--out", str(tmp_path / "ds2"), "--split", "siuo"])
    assert r.exit_code == 0, r.output
    assert json.loads(open(tmp_path / "ds2" / "metadata.jsonl").readline())["question_id"] == "1001"


def test_export_hf_refuses_a_path_built_from_data_that_leaves_out(tmp_path, monkeypatch):
    """A case id written before import checked ids (or by hand) cannot make export-hf write outside --out."""
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    store = RunStore.open("hf")
    Image.new("RGB", (6, 6), (1, 2, 3)).save(store.images_dir / "a.png")
    store.write_all(Case, [_case("a/../../../escaped", "generated", "images/a.png")])
    out = tmp_path / "deep" / "ds"
    r = CliRunner().invoke(app, ["export-hf", "--run", "hf", "--out", str(out)])
    assert r.exit_code == 2 and "would leave the folder" in r.output and "Traceback" not in r.output
    assert not list(tmp_path.rglob("escaped*"))
