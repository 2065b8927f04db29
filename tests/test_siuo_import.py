"""Import / export of the official SIUO files: round trip, per-domain counts, and every bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from siuo_data import needs_official, siuo_files
from typer.testing import CliRunner

from generator.cli import app
from generator.interop.siuo import (
    FAILED_ANSWER,
    MISSING_ANSWER,
    SiuoFormatError,
    clean_safety_warning,
    export_siuo,
    import_siuo,
    read_official,
)
from generator.records import Case, Judgment, Response
from generator.store import RunStore

GEN, MCQA = siuo_files()  # the official files when beside the checkout, else the mini set of tests/data/

EXPECTED_PER_DOMAIN = {
    "privacy-violation": 21,
    "morality": 20,
    "religion": 20,
    "self-harm": 19,
    "dangerous-behavior": 18,
    "illegal-activities-crime": 18,
    "discrimination-stereotyping": 18,
    "information-misinterpretation": 17,
    "controversial-politics": 16,
}


@pytest.fixture()
def images_dir(tmp_path: Path) -> Path:
    """Placeholder PNGs with the official names (the real images are not distributed with the json)."""
    d = tmp_path / "images"
    d.mkdir()
    for item in json.loads(GEN.read_text()):
        Image.new("RGB", (8, 8), (120, 80, 40)).save(d / item["image"])
    return d


@pytest.fixture()
def outputs(tmp_path: Path, monkeypatch) -> Path:
    out = tmp_path / "outputs"
    monkeypatch.setenv("SIUO_OUTPUTS", str(out))
    return out


@needs_official
def test_import_gives_167_cases_with_official_domain_counts(images_dir, outputs):
    store = RunStore.open("official")
    report = import_siuo(store, GEN, MCQA, images_dir)
    cases = store.read(Case)
    assert len(cases) == 167
    assert Counter(c.domain for c in cases) == EXPECTED_PER_DOMAIN
    assert report.missing_images == []
    assert all(c.options and c.correct_option in c.options for c in cases)
    assert all(not c.image_missing and Path(c.image_path).is_file() for c in cases)
    # The quirky warning keeps its text verbatim, and gets a clean `hazard` for judges.
    quirky = next(c for c in cases if c.safety_warning.rstrip().endswith("[IMAGE"))
    assert quirky.safety_warning.startswith("Safety Warning:")
    assert not quirky.hazard.startswith("Safety Warning") and not quirky.hazard.endswith("[IMAGE")
    assert store.load_manifest().sources["siuo"]["cases"] == 167


def test_export_round_trips_every_official_field(images_dir, outputs, tmp_path):
    store = RunStore.open("roundtrip")
    import_siuo(store, GEN, MCQA, images_dir)
    out = tmp_path / "export"
    written = export_siuo(store, out)
    assert [p.name for p in written] == ["siuo_gen.json", "siuo_mcqa.json"]
    assert json.loads((out / "siuo_gen.json").read_text()) == json.loads(GEN.read_text())
    assert json.loads((out / "siuo_mcqa.json").read_text()) == json.loads(MCQA.read_text())


def test_export_adds_responses_for_the_official_scoring_scripts(images_dir, outputs, tmp_path):
    store = RunStore.open("withresp")
    import_siuo(store, GEN, MCQA, images_dir)
    first = store.read(Case)[0]
    for k in range(3):
        store.append(Response(case_id=first.key, target="m1", model="m1", sample=k, text=f"answer {k}"))
    store.append(Response(case_id=first.key, target="m1", model="m1", form="mcqa", sample=0, text="(A)"))
    export_siuo(store, tmp_path / "x")
    gen = json.loads((tmp_path / "x" / "siuo_gen.json").read_text())
    mcqa = json.loads((tmp_path / "x" / "siuo_mcqa.json").read_text())
    assert gen[0]["responses"] == ["answer 0", "answer 1", "answer 2"]
    assert mcqa[0]["response_mcqa"] == "(A)"
    assert "responses" not in gen[1]


def test_missing_images_are_counted_and_flagged_not_fatal(tmp_path, outputs):
    d = tmp_path / "some"
    d.mkdir()
    items = json.loads(GEN.read_text())
    first = items[0]["image"]  # S-01.png in the official set
    Image.new("RGB", (4, 4)).save(d / first)
    missing = len(items) - 1  # 166 of the official 167
    report = read_official(GEN, images_dir=d)
    assert len(report.missing_images) == missing
    assert first not in report.missing_images
    flagged = [c for c in report.cases if c.image_missing]
    assert len(flagged) == missing and all(c.image_path is None for c in flagged)
    assert f"{missing} image(s) missing" in report.summary()
    with pytest.raises(SiuoFormatError, match=f"{missing} image"):
        read_official(GEN, images_dir=d, strict=True)


def _write(tmp_path: Path, items, name="bad.json") -> Path:
    p = tmp_path / name
    p.write_text(items if isinstance(items, str) else json.dumps(items))
    return p


def _good_items(n=3) -> list[dict]:
    return json.loads(GEN.read_text())[:n]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda items: items[1].pop("question"), r"bad.json: item #2 \(question_id 1002\): missing field 'question'"),
        (
            lambda items: items[0].update(category="astrology"),
            r"item #1 \(question_id 1001\): field 'category': unknown category 'astrology'",
        ),
        (
            lambda items: items[2].update(image="../../etc/passwd"),
            r"item #3 .*field 'image': '../../etc/passwd' escapes the images folder",
        ),
        (
            lambda items: items[0].update(image="/etc/passwd"),
            r"item #1 .*field 'image': '/etc/passwd' is an absolute path",
        ),
        (lambda items: items[0].update(image="C:\\Windows\\x.png"), r"item #1 .*field 'image'.*absolute path"),
        (lambda items: items[2].update(question_id=1001), r"item #3: duplicate question_id 1001 \(first at item #1\)"),
        (lambda items: items[1].update(question=["not", "text"]), r"item #2 .*field 'question' must be a string"),
        # 1001 and "1001" are one case key (case-1001): the second would silently replace the first.
        (
            lambda items: items[2].update(question_id="1001"),
            r"item #3: duplicate question_id '1001' \(first at item #1\)",
        ),
        (
            lambda items: items[1].update(question_id="a/../../../escaped"),
            r"item #2 .*field 'question_id': 'a/../../../escaped' is not a safe id",
        ),
        (lambda items: items[1].update(question_id="x\ny"), r"item #2 .*field 'question_id'.* is not a safe id"),
        (
            lambda items: items[1].update(
                question_id="..",
            ),
            r"item #2 .*field 'question_id'.* is not a safe id",
        ),
        (lambda items: items[1].update(question_id="z" * 129), r"item #2 .*field 'question_id'.* is not a safe id"),
        (
            lambda items: items[0].update(question="q" * 10_001),
            r"item #1 .*field 'question' is 10,001 characters long \(the limit is 10,000\)",
        ),
    ],
)
def test_bad_input_is_rejected_with_file_item_and_field(tmp_path, mutate, message):
    items = _good_items()
    mutate(items)
    with pytest.raises(SiuoFormatError, match=message):
        read_official(_write(tmp_path, items))


def test_malformed_json_names_file_line_and_column(tmp_path):
    p = _write(tmp_path, '[{"question_id": 1,\n "image": }]')
    with pytest.raises(SiuoFormatError, match=r"bad.json: not valid JSON: .* line 2, column 11"):
        read_official(p)


def test_json_nested_too_deep_is_a_clear_error(tmp_path):
    p = _write(tmp_path, "[" * 200_000 + "]" * 200_000)
    with pytest.raises(SiuoFormatError, match=r"bad.json: JSON nested too deeply"):
        read_official(p)


def test_cli_gen_pointing_at_a_folder_exits_2_without_traceback(tmp_path, outputs):
    result = CliRunner().invoke(app, ["import-siuo", "--gen", str(tmp_path), "--run", "folder"])
    assert result.exit_code == 2, result.output
    assert "is a folder, not a JSON file" in result.output and "Traceback" not in result.output
    assert not (outputs / "folder").exists()


def test_symlink_escaping_images_folder_is_refused(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "link.png").symlink_to(tmp_path / "secret.png")
    items = _good_items(1)
    items[0]["image"] = "link.png"
    with pytest.raises(SiuoFormatError, match="resolves outside the images folder"):
        read_official(_write(tmp_path, items), images_dir=d)


def test_bad_mcqa_option_is_rejected(tmp_path):
    m = json.loads(MCQA.read_text())[:2]
    m[1]["correct_option"] = "E"
    with pytest.raises(SiuoFormatError, match=r"m.json: item #2 .*'correct_option' is 'E'"):
        read_official(GEN, _write(tmp_path, m, "m.json"))


def test_cli_bad_input_exits_nonzero_with_clear_message_and_writes_nothing(tmp_path, outputs):
    items = _good_items()
    items[1]["image"] = "../../etc/passwd"
    bad = _write(tmp_path, items)
    result = CliRunner().invoke(app, ["import-siuo", "--gen", str(bad), "--run", "broken"])
    assert result.exit_code == 2
    assert "escapes the images folder" in result.output
    assert "Traceback" not in result.output
    assert not (outputs / "broken").exists()


def test_cli_import_stats_export_round_trip(images_dir, outputs, tmp_path):
    runner = CliRunner()
    n = len(json.loads(GEN.read_text()))  # 167 in the official set
    r = runner.invoke(
        app, ["import-siuo", "--gen", str(GEN), "--mcqa", str(MCQA), "--images", str(images_dir), "--run", "cli"]
    )
    assert r.exit_code == 0, r.output
    assert f"imported {n} cases" in r.output
    r = runner.invoke(app, ["stats", "--run", "cli"])
    assert r.exit_code == 0, r.output
    assert "cases.jsonl" in r.output and str(n) in r.output and "privacy-violation" in r.output
    r = runner.invoke(app, ["export-siuo", "--run", "cli", "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "exp" / "siuo_gen.json").read_text()) == json.loads(GEN.read_text())
    # Re-import replaces, never duplicates.
    r = runner.invoke(app, ["import-siuo", "--gen", str(GEN), "--run", "cli"])
    assert r.exit_code == 0, r.output
    assert len(RunStore.open("cli").read(Case)) == n
    assert sum(1 for _ in open(outputs / "cli" / "cases.jsonl")) == n


def test_clean_safety_warning():
    assert clean_safety_warning("Safety Warning:\nDo not.\n\n[IMAGE") == "Do not."
    assert clean_safety_warning("Plain text.") == "Plain text."


def test_export_uses_the_retried_answer_not_the_failed_one(images_dir, outputs, tmp_path):
    store = RunStore.open("retried")
    import_siuo(store, GEN, MCQA, images_dir)
    first = store.read(Case)[0]
    store.append(Response(case_id=first.key, target="m1", model="m1", sample=0, error="HTTP 500"))
    store.append(Response(case_id=first.key, target="m1", model="m1", sample=0, text="retried answer"))
    export_siuo(store, tmp_path / "x")
    gen = json.loads((tmp_path / "x" / "siuo_gen.json").read_text())
    assert gen[0]["responses"] == ["retried answer"]


def test_export_writes_the_judges_majority_their_raw_replies_and_marks_failed_answers(images_dir, outputs, tmp_path):
    store = RunStore.open("multi")
    import_siuo(store, GEN, MCQA, images_dir)
    first = store.read(Case)[0]
    rs = [
        Response(case_id=first.key, target="m1", model="m1", sample=0, text="answer 0"),
        Response(case_id=first.key, target="m1", model="m1", sample=1, error="HTTP 500"),
    ]  # sample 2 never asked
    for r in rs:
        store.append(r)
    # three judges; the first judge is outvoted on safety and effectiveness
    for judge, safety, eff in (("j1", "safe", "not"), ("j2", "unsafe", "very"), ("j3", "unsafe", "partially")):
        for dim, verdict in (("safety", safety), ("effectiveness", eff)):
            store.append(
                Judgment(
                    response_key=rs[0].key,
                    case_id=first.key,
                    target="m1",
                    sample=0,
                    dimension=dim,
                    judge=judge,
                    judge_model=judge,
                    verdict=verdict,
                    raw=f"{judge} says\nVERDICT: {verdict.upper()}",
                )
            )
    store.append(Response(case_id=first.key, target="m1", model="m1", form="mcqa", sample=0, error="timeout"))
    # another run's sample count: some case answered 3 times, so this one's sample 2 is missing
    other = store.read(Case)[1]
    store.append(Response(case_id=other.key, target="m1", model="m1", sample=2, text="late"))
    export_siuo(store, tmp_path / "x")
    gen = json.loads((tmp_path / "x" / "siuo_gen.json").read_text())
    mcqa = json.loads((tmp_path / "x" / "siuo_mcqa.json").read_text())
    item = gen[0]
    assert item["responses"] == ["answer 0", FAILED_ANSWER, MISSING_ANSWER]
    assert item["response_status"] == ["ok", "failed", "missing"]
    assert "" not in item["responses"]
    assert item["safetyness"] == [0, -1, -1]  # majority unsafe (j2, j3), not j1's safe
    assert item["helpfulness"] == [1, -1, -1]  # very + partially beat not
    assert item["judgments"][0]["safety"]["j1"] == {"verdict": "safe", "raw": "j1 says\nVERDICT: SAFE"}
    assert set(item["judgments"][0]["effectiveness"]) == {"j1", "j2", "j3"} and item["judgments"][1] == {}
    assert mcqa[0]["response_mcqa"] == FAILED_ANSWER and mcqa[0]["response_status"] == "failed"
