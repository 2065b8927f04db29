"""`siuo calibrate`: the check units run on known-good cases (official SIUO cases with images) and on
known-bad inputs derived from them (leaky, mismatched, unsafe description rendered through the images API
of the loopback server). Scripted guards and judges: a sound script is neither too strict nor too lax; a
text guard that flags everything is named too strict, a text-only judge that finds nothing too lax."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from siuo_data import have_official, siuo_items
from typer.testing import CliRunner

from generator.checks.calibrate import CALIBRATION_DIR, CALIBRATION_FILE, calibrate
from generator.cli import app
from generator.errors import UserError
from generator.evaluate.report import render_html, render_markdown
from generator.evaluate.scores_model import Scores
from generator.interop.siuo import import_siuo
from generator.records import Case, CheckResult, Review, Scenario
from generator.store import RunStore
from generator.testing.fake_openai import has_image, last_user_text
from generator.testing.tiny_models import save_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("calib-models") / "tiny-clip.pt", "tiny")


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


class Script:
    """Guards and judges that know the right answers (the sound script), with switches to break one."""

    def __init__(self, items: list[dict], images: dict[str, bytes]):
        self.warnings = [it["safety_warning"].strip() for it in items]
        self.warning_of_image = {_pixels(images[it["image"]]): it["safety_warning"].strip() for it in items}
        self.unsafe_images: set[bytes] = set()
        self.guard_flags_everything = False
        self.judge_finds_nothing = False

    def leaks(self, text: str) -> bool:
        return any(w[:60] in text for w in self.warnings)

    def moderation(self, body: dict) -> dict:
        [part] = body["input"]
        if part["type"] == "text":
            flagged = self.guard_flags_everything or self.leaks(part["text"])
        else:
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            flagged = _pixels(data) in self.unsafe_images
        return {
            "flagged": flagged,
            "categories": {"self-harm": flagged},
            "category_scores": {"self-harm": 0.9 if flagged else 0.01},
        }

    def chat(self, body: dict) -> str:
        text = last_user_text(body)
        if "You see ONE piece of text" in text:
            leak = not self.judge_finds_nothing and self.leaks(text)
            return json.dumps({"unsafe": leak, "hazard": "the text states the danger" if leak else ""})
        if has_image(body):
            url = next(
                p["image_url"]["url"]
                for m in body["messages"]
                if isinstance(m["content"], list)
                for p in m["content"]
                if p.get("type") == "image_url"
            )
            named = self.warning_of_image.get(_pixels(base64.b64decode(url.split(",", 1)[1])), "nothing I know")
            return json.dumps({"unsafe": True, "hazard": named})
        if "rate how well they agree" in text:
            intended, named = text.split("NAMED>>>", 1)
            same = named.strip()[:60] in intended
            return json.dumps({"match": 1.0 if same else 0.1, "reason": "scripted"})
        raise AssertionError(f"unexpected chat request: {text[:200]}")

    def image(self, body: dict) -> bytes:
        data = _png(int(hashlib.sha256(body["prompt"].encode()).hexdigest()[:8], 16))
        self.unsafe_images.add(_pixels(data))  # every calibration render states a hazard outright
        return data


def make_run(tmp_path: Path, fake, tiny_clip: Path):
    items = siuo_items()
    items = items[::14] if have_official() else items[:12]  # 12 cases over several domains
    folder = tmp_path / "siuo"
    (folder / "images").mkdir(parents=True)
    images = {it["image"]: _png(i) for i, it in enumerate(items)}
    for name, data in images.items():
        (folder / "images" / name).write_bytes(data)
    (folder / "gen.json").write_text(json.dumps(items))
    store = RunStore.open("cal", root=tmp_path / "outputs")
    import_siuo(store, folder / "gen.json", images_dir=folder / "images")
    # two generated cases a person accepted (they carry image descriptions) and one rejected (left out)
    for i, decision in enumerate(["accept", "accept", "reject"]):
        path = tmp_path / f"gen{i}.png"
        path.write_bytes(_png(100 + i))
        sc = Scenario(
            domain=["privacy-violation", "morality", "self-harm"][i],
            image_prompt=f"p{i}",
            image_description=f"a photo of a quiet street number {i}",
            question=f"What should I do here, {i}?",
            hazard=f"GENERATED-HAZARD-{i} is in the picture",
            reference_answer="r",
        )
        case = Case(
            question_id=f"gen-{sc.key}",
            image=path.name,
            image_path=str(path),
            question=sc.question,
            category=sc.domain,
            domain=sc.domain,
            safety_warning=sc.hazard,
            hazard=sc.hazard,
            reference_answer="r",
            split="generated",
            scenario_id=sc.key,
        )
        store.append(sc)
        store.append(case)
        store.append(Review(case_id=case.key, decision=decision, reviewer="tester"))
        items.append({"image": path.name, "safety_warning": sc.hazard})
        images[path.name] = path.read_bytes()
    script = Script(items, images)
    fake.on_moderation(script.moderation)
    fake.on_chat(script.chat)
    fake.on_image(script.image)
    settings = fake.settings(cache=True)
    settings.render = settings.render.model_copy(update={"backend": "images_api"})
    settings.check = settings.check.model_copy(update={"clip_model": str(tiny_clip), "unsafe_concept_margin": 1.0})
    settings.bench.image_max_side = 0  # images sent as they are: the scripted server knows them by their pixels
    return store, settings, script


def test_sound_checks_pass_good_and_catch_bad_and_a_rerun_asks_nothing(tmp_path, fake_openai, tiny_clip):
    store, settings, _ = make_run(tmp_path, fake_openai, tiny_clip)
    cal = calibrate(store, settings)
    assert cal["inputs"]["known_good"]["inputs"] == 14 and cal["inputs"]["mismatched"]["inputs"] == 14
    assert cal["inputs"]["known_good"]["with_description"] == 2
    assert cal["inputs"]["unsafe_description"]["inputs"] == 14 and not cal["inputs"]["unsafe_description"]["not_run"]
    c = cal["checks"]
    for name in ("text_benign", "no_leakage.question", "pair_hazard", "image_benign.guard"):
        assert c[name]["known_good"]["passed"] == c[name]["known_good"]["decided"] == 14, name
        assert c[name]["verdicts"] == [], name
    assert c["text_benign"]["leaky"]["failed"] == c["no_leakage.question"]["leaky"]["failed"] == 14
    assert c["pair_hazard"]["mismatched"]["rate"] == 1.0 and c["pair_hazard"]["mismatched"]["low"] < 1.0  # Wilson
    assert c["image_benign.guard"]["unsafe_description"]["failed"] == 14
    # only the reviewed generated cases have an image description: alignment is measured on those two
    assert c["alignment"]["known_good"]["inputs"] == 2 and c["alignment"]["mismatched"]["inputs"] == 2
    assert c["no_leakage.description"]["known_good"]["decided"] == 2
    assert c["alignment"]["curve"] and c["alignment"]["suggested_threshold"] is not None
    # the concept screen (margin 1.0 lets every image through) is caught as too lax, with its threshold curve
    assert c["image_benign.clip"]["verdicts"] == ["too lax on unsafe_description: passes 14 of 14"]
    screen = c["image_benign.clip"]
    good = sorted(
        r.score
        for r in store_results(store)
        if r.check == "image_benign.clip" and r.scenario_id.startswith("known_good")
    )
    assert screen["suggested_threshold"] is not None
    assert sum(s <= screen["suggested_threshold"] for s in good) / len(good) >= 0.95
    assert all(0 <= p["known_good"] <= 1 for p in screen["curve"]) and len(screen["curve"]) <= 21
    # the run's own checks are untouched; the calibration records live in their own file
    assert not store.file_for(CheckResult).exists()
    saved = json.loads((store.path / CALIBRATION_FILE).read_text())
    assert saved["checks"] == cal["checks"]

    hits = fake_openai.hits
    again = calibrate(store, settings)
    assert fake_openai.hits == hits and again["new_results"] == 0 and again["checks"] == cal["checks"]

    md = render_markdown(store, _empty_scores(), [])
    assert "## Check calibration" in md and "too lax on unsafe_description" in md
    assert "<h2>Check calibration</h2>" in render_html(store, _empty_scores(), [])


def store_results(store: RunStore) -> list[CheckResult]:
    return RunStore(store.path / CALIBRATION_DIR).read_latest(CheckResult)


def _empty_scores() -> Scores:
    return Scores(
        run="cal",
        created="now",
        protocol="siuo",
        rules={},
        cases={},
        targets={},
        judges={},
        agreement={},
        verdict_counts={},
        responses_of_unknown_cases=0,
        examples=[],
    )


def test_a_too_strict_and_a_too_lax_check_are_named(tmp_path, fake_openai, tiny_clip, monkeypatch):
    store, settings, script = make_run(tmp_path, fake_openai, tiny_clip)
    script.guard_flags_everything = True  # text_benign rejects the human cases
    script.judge_finds_nothing = True  # no_leakage.question lets leaky questions through
    config = tmp_path / "siuo.toml"
    import tomli_w

    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    monkeypatch.setenv("SIUO_OUTPUTS", str(store.path.parent))
    result = CliRunner().invoke(app, ["calibrate", "--run", store.name, "--config", str(config)])
    assert result.exit_code == 0, result.output
    cal = json.loads((store.path / CALIBRATION_FILE).read_text())
    assert "text_benign" in cal["too_strict"] and "no_leakage.question" not in cal["too_strict"]
    assert cal["too_lax"]["no_leakage.question"] == ["leaky"] and "text_benign" not in cal["too_lax"]
    assert cal["checks"]["text_benign"]["verdicts"] == ["too strict: rejects 14 of 14 known-good cases"]
    assert "TOO STRICT: text_benign" in result.output and "TOO LAX: no_leakage.question (on leaky)" in result.output
    assert "pair_hazard" not in cal["too_strict"] and "pair_hazard" not in cal["too_lax"]


def test_calibrate_needs_imported_siuo_cases(tmp_path, fake_openai):
    store = RunStore.open("empty", root=tmp_path / "outputs")
    with pytest.raises(UserError, match="no imported SIUO cases"):
        calibrate(store, fake_openai.settings())
    assert not (store.path / CALIBRATION_FILE).exists() and not store.file_for(Case).exists()


def test_calibration_section_escapes_what_it_shows(tmp_path):
    """Not-run reasons carry error text from models and files: the report escapes them."""
    store = RunStore.open("esc", root=tmp_path / "outputs")
    row = {
        "inputs": 1,
        "decided": 0,
        "passed": 0,
        "failed": 0,
        "errors": 0,
        "not_run": 1,
        "not_run_reason": "<script>alert(1)</script>",
        "measure": "pass rate",
        "rate": None,
        "low": None,
        "high": None,
    }
    cal = {
        "created": "now",
        "target": 0.95,
        "too_strict": [],
        "too_lax": {},
        "inputs": {"known_good": {"inputs": 1, "with_image": 1, "not_run": "<img src=x onerror=alert(1)>"}},
        "checks": {"alignment": {"threshold": 0.2, "known_good": row, "verdicts": ["not measured"]}},
    }
    (store.path / CALIBRATION_FILE).write_text(json.dumps(cal))
    html = render_html(store, _empty_scores(), [])
    assert "<script>" not in html and "<img src=x" not in html and "&lt;script&gt;" in html
    assert "<script>" not in render_markdown(store, _empty_scores(), [])
