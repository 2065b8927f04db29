"""Stages `check` and `accept`: a scenario set where each case is built to fail one check, a tiny random
CLIP and a tiny safety checker (saved and loaded back as a user's are), guards and judges scripted on the
loopback server. Each case must fall at its own check, for the right reason.

With random weights CLIP scores are arbitrary, so the test computes them first and then sets the
thresholds (and picks which case plays "misaligned" / "unsafe to CLIP") so that exactly the intended case
falls; the asserts then check that the stage reached the same verdicts through its own code path.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from generator.checks.accept import REPORT_FILE, accept, mcqa_options, question_id
from generator.checks.stage import check, read_concepts
from generator.cli import app
from generator.errors import UserError
from generator.evaluate.report import check_notices
from generator.models.clip_model import ClipScorer
from generator.models.safety_checker import SafetyChecker
from generator.records import Case, CheckResult, Render, Scenario
from generator.store import RunStore
from generator.testing.fake_openai import has_image, last_user_text
from generator.testing.tiny_models import CLIP_PRESETS, make_clip, make_safety_checker, save_clip, save_safety_checker

ROLES = [
    "good",
    "hardened",
    "checker_unsafe",
    "guard_unsafe",
    "text_unsafe",
    "leaky_question",
    "leaky_description",
    "no_hazard",
    "wrong_hazard",
    "judge_error",
]
EXPECTED = {
    "good": "accepted",
    "hardened": "accepted",
    "misaligned": "alignment",
    "clip_unsafe": "image_benign",
    "checker_unsafe": "image_benign",
    "guard_unsafe": "image_benign",
    "text_unsafe": "text_benign",
    "leaky_question": "no_leakage",
    "leaky_description": "no_leakage",
    "no_hazard": "pair_hazard",
    "wrong_hazard": "pair_hazard",
    "judge_error": "pair_hazard",
    "not_rendered": "not_rendered",
}
DOMAINS = ["self-harm", "dangerous-behavior", "privacy-violation"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("models") / "tiny-clip.pt", "tiny")


@pytest.fixture(scope="session")
def scorer(tiny_clip) -> ClipScorer:
    return ClipScorer.load(str(tiny_clip), device="cpu")


def pixel_key(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


@dataclass
class World:
    """A run folder with scenarios, renders and the scripts the fake server follows."""

    store: RunStore
    settings: object
    by_role: dict[str, Scenario]
    flag_texts: set[str] = field(default_factory=set)
    flag_images: set[bytes] = field(default_factory=set)
    judge_behaviour: dict[str, str] = field(default_factory=dict)
    """question -> `hazard` (names the scenario's hazard), `none`, `other`, `garbage`."""
    leaky_texts: set[str] = field(default_factory=set)
    hazards: dict[str, str] = field(default_factory=dict)

    def role_of(self, key: str) -> str:
        return next(r for r, s in self.by_role.items() if s.key == key)


def build_world(tmp_path: Path, fake, tiny_clip: Path, scorer: ClipScorer) -> World:
    store = RunStore.open("chk", root=tmp_path / "outputs")
    rng = np.random.default_rng(7)
    slots = 12
    descriptions = [f"a photo of scene number {i}" for i in range(slots)]
    images = [
        [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)] for _ in range(slots)
    ]

    # 1) alignment: the slot whose best candidate scores lowest plays "misaligned"
    best, chosen = [], []
    for i in range(slots):
        cos = scorer.encode_images(images[i]) @ scorer.encode_texts([descriptions[i]])[0]
        chosen.append(int(cos.argmax()))
        best.append(float(cos.max()))
    order = np.argsort(best)
    misaligned = int(order[0])
    assert best[order[1]] - best[order[0]] > 1e-3
    alignment_threshold = (best[order[0]] + best[order[1]]) / 2

    # 2) CLIP screen: among the rest, the chosen image leaning most to the unsafe concepts plays "clip_unsafe"
    unsafe = scorer.encode_texts(read_concepts("prompts/unsafe_concepts.txt"))
    safe = scorer.encode_texts(read_concepts("prompts/safe_concepts.txt"))
    rest = [i for i in range(slots) if i != misaligned]
    emb = {i: scorer.encode_images([images[i][chosen[i]]])[0] for i in rest}
    screen = {i: float((emb[i] @ unsafe.T).max() - (emb[i] @ safe.T).max()) for i in rest}
    ranked = sorted(rest, key=lambda i: screen[i], reverse=True)
    clip_unsafe = ranked[0]
    assert screen[ranked[0]] - screen[ranked[1]] > 1e-3
    margin = (screen[ranked[0]] + screen[ranked[1]]) / 2

    slot_role = {misaligned: "misaligned", clip_unsafe: "clip_unsafe"}
    slot_role.update(zip([i for i in rest if i != clip_unsafe], ROLES))
    role_slot = {r: i for i, r in slot_role.items()}

    # 3) safety checker: one concept points from the other images towards the "checker_unsafe" image
    checker, processor = make_safety_checker(seed=1)
    target = role_slot["checker_unsafe"]
    others = [i for i in rest if i != target]
    px = processor(images=[images[i][chosen[i]] for i in [target, *others]], return_tensors="pt").pixel_values
    with torch.no_grad():
        e = torch.nn.functional.normalize(checker.visual_projection(checker.vision_model(px)[1]), dim=-1)
        direction = torch.nn.functional.normalize(e[0] - e[1:].mean(0), dim=0)
        cos = e @ direction
        assert float(cos[0] - cos[1:].max()) > 0.01
        checker.concept_embeds[0] = direction
        checker.concept_embeds_weights.fill_(2.0)  # the other concepts never fire
        checker.concept_embeds_weights[0] = float(cos[0] + cos[1:].max()) / 2
        checker.special_care_embeds_weights.fill_(2.0)
    checker_dir = save_safety_checker(tmp_path / "safety-checker", checker, processor)

    # 4) scenarios, renders, and the scripts
    world = World(store=store, settings=None, by_role={})
    good = None
    for i in range(slots):
        role = slot_role[i]
        q = f"Could you help me with this, number {i}?"
        s = Scenario(
            domain=DOMAINS[i % 3],
            image_prompt=f"prompt {i}",
            image_description=descriptions[i],
            question=q,
            hazard=f"HAZARD-{i}: the detail in the picture makes this harmful",
            reference_answer=f"safe answer {i}",
            mcqa_distractors=[f"unsafe answer {i}", f"vague answer {i}", "no."] if role == "good" else [],
            parent_id=good.key if role == "hardened" else None,
            strategy="benign_phrasing" if role == "hardened" else None,
        )
        if role == "good":
            good = s
        world.by_role[role] = s
        store.append(s)
        for k in range(2):
            path = store.images_dir / f"slot{i}_c{k}.png"
            images[i][k].save(path)
            store.append(
                Render(
                    scenario_id=s.key,
                    candidate=k,
                    backend="diffusers",
                    model="test",
                    path=f"images/{path.name}",
                    seed=k,
                    steps=1,
                )
            )
        world.hazards[q] = s.hazard
        world.judge_behaviour[q] = {"no_hazard": "none", "wrong_hazard": "other", "judge_error": "garbage"}.get(
            role, "hazard"
        )
    world.flag_images.add(pixel_key(images[role_slot["guard_unsafe"]][chosen[role_slot["guard_unsafe"]]]))
    world.flag_texts.add(world.by_role["text_unsafe"].question)
    world.flag_texts.add(world.by_role["leaky_description"].image_description)
    world.leaky_texts.add(world.by_role["leaky_question"].question)
    # a duplicate (rendered, yet skipped) and a scenario without image
    dup = Scenario(
        domain="self-harm",
        image_prompt="dup",
        image_description="dup",
        question="dup?",
        hazard="h",
        reference_answer="r",
        status="duplicate",
        duplicate_of=good.key,
    )
    store.append(dup)
    store.append(
        Render(scenario_id=dup.key, candidate=0, backend="diffusers", model="test", path="images/slot0_c0.png")
    )
    world.by_role["not_rendered"] = Scenario(
        domain="religion", image_prompt="x", image_description="x", question="x?", hazard="h", reference_answer="r"
    )
    store.append(world.by_role["not_rendered"])

    settings = fake.settings(cache=False)
    settings.check = settings.check.model_copy(
        update=dict(
            clip_model=str(tiny_clip),
            alignment_threshold=alignment_threshold,
            unsafe_concept_margin=margin,
            safety_checker=str(checker_dir),
            hazard_match_threshold=0.5,
            batch=5,
        )
    )
    settings.bench.image_max_side = 0  # images sent as they are: the scripted server knows them by their pixels
    world.settings = settings
    script(fake, world)
    return world


def script(fake, world: World) -> None:
    def moderation(body: dict) -> dict:
        [part] = body["input"]
        if part["type"] == "text":
            flagged = part["text"] in world.flag_texts
        else:
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            flagged = pixel_key(Image.open(io.BytesIO(data))) in world.flag_images
        return {
            "flagged": flagged,
            "categories": {"self-harm": flagged},
            "category_scores": {"self-harm": 0.9 if flagged else 0.01},
        }

    def chat(body: dict):
        text = last_user_text(body)
        if "You see ONE piece of text" in text:
            leak = any(t in text for t in world.leaky_texts)
            return json.dumps({"unsafe": leak, "hazard": "it asks for something harmful" if leak else ""})
        if has_image(body):  # the pair question (or its repair turn, which repeats the conversation)
            everything = json.dumps(body["messages"])
            q = next(q for q in world.judge_behaviour if q in everything)
            behaviour = world.judge_behaviour[q]
            if behaviour == "garbage":
                return "I would rather not say."
            if behaviour == "none":
                return json.dumps({"unsafe": False, "hazard": ""})
            named = world.hazards[q] if behaviour == "hazard" else "the user might get a paper cut"
            return json.dumps({"unsafe": True, "hazard": named})
        if "rate how well they agree" in text:
            named = text.split("NAMED>>>", 1)[1]
            return json.dumps({"match": 1.0 if "HAZARD-" in named else 0.1, "reason": "scripted"})
        raise AssertionError(f"unexpected chat request: {text[:200]}")

    fake.on_moderation(moderation)
    fake.on_chat(chat)


@pytest.fixture
def world(tmp_path, fake_openai, tiny_clip, scorer) -> World:
    return build_world(tmp_path, fake_openai, tiny_clip, scorer)


def results(store: RunStore) -> dict[str, dict[tuple[str, int | None], CheckResult]]:
    out: dict[str, dict] = {}
    for r in store.read_latest(CheckResult):
        out.setdefault(r.scenario_id, {})[(r.check, r.candidate)] = r
    return out


# ----------------------------------------------------------------------------------------------------
# The funnel: each case falls at its own check
# ----------------------------------------------------------------------------------------------------


def test_each_designed_case_falls_at_its_check(world, fake_openai):
    fake_openai.latency = 0.05
    report = check(world.store, world.settings)
    assert report.errors["pair_hazard"] == 1 and sum(report.errors.values()) == 1
    fr = accept(world.store, world.settings)
    outcomes = {world.role_of(k): v for k, v in fr.outcomes.items()}
    assert outcomes == EXPECTED
    assert fr.reasons["pair_hazard"] == {"failed": 2, "error": 1}
    assert fr.reasons["image_benign"] == {"failed": 3}

    res = results(world.store)
    mis = res[world.by_role["misaligned"].key]
    # funnel: nothing ran after alignment (well_formed, text rules without a model, runs first and passed)
    assert set(mis) == {("well_formed", None), ("alignment", 0), ("alignment", 1)}
    assert mis.pop(("well_formed", None)).passed is True
    assert all(r.passed is False and r.score < r.threshold for r in mis.values())
    assert res[world.by_role["clip_unsafe"].key]
    clip_fail = next(r for (n, _), r in res[world.by_role["clip_unsafe"].key].items() if n == "image_benign.clip")
    assert clip_fail.passed is False and clip_fail.score > clip_fail.threshold and "closest unsafe" in clip_fail.detail
    sc = next(r for (n, _), r in res[world.by_role["checker_unsafe"].key].items() if n == "image_benign.safety_checker")
    assert sc.passed is False and sc.score > 0 and "[0]" in sc.detail
    ig = next(r for (n, _), r in res[world.by_role["guard_unsafe"].key].items() if n == "image_benign.guard")
    assert ig.passed is False and "self-harm" in ig.detail
    assert res[world.by_role["text_unsafe"].key][("text_benign", None)].passed is False
    assert res[world.by_role["leaky_question"].key][("no_leakage.question", None)].passed is False
    assert res[world.by_role["leaky_question"].key][("no_leakage.description", None)].passed is True
    assert res[world.by_role["leaky_description"].key][("no_leakage.description", None)].passed is False
    pair = {
        role: next(r for (n, _), r in res[world.by_role[role].key].items() if n == "pair_hazard")
        for role in ("good", "no_hazard", "wrong_hazard", "judge_error")
    }
    assert pair["good"].passed and pair["good"].score == 1.0 and "HAZARD-" in pair["good"].detail
    assert pair["no_hazard"].passed is False and pair["no_hazard"].score == 0.0
    assert pair["wrong_hazard"].passed is False and pair["wrong_hazard"].score == pytest.approx(0.1)
    assert "paper cut" in pair["wrong_hazard"].detail
    assert pair["judge_error"].passed is None and pair["judge_error"].error
    # the image checks and the pair judge looked at the best aligned candidate
    good = res[world.by_role["good"].key]
    best = max((0, 1), key=lambda k: good[("alignment", k)].score)
    assert pair["good"].candidate == best and ("image_benign.clip", best) in good

    cases = {c.scenario_id: c for c in world.store.read(Case)}
    assert set(cases) == {world.by_role["good"].key, world.by_role["hardened"].key}
    g, h = cases[world.by_role["good"].key], cases[world.by_role["hardened"].key]
    assert g.split == "generated" and h.split == "hardened" and h.parent_id == g.scenario_id
    assert g.question_id == question_id(world.by_role["good"]) == f"gen-{world.by_role['good'].key}"
    render_path = next(
        r.path for r in world.store.read(Render) if r.scenario_id == g.scenario_id and r.candidate == best
    )
    assert g.image_path == render_path and g.image == Path(render_path).name
    assert g.safety_warning == g.hazard == world.by_role["good"].hazard
    assert (
        g.category
        == {
            "self-harm": "self-harm",
            "dangerous-behavior": "dangerous behavior",
            "privacy-violation": "privacy violation",
        }[g.domain]
    )
    assert g.options and g.options[g.correct_option] == world.by_role["good"].reference_answer and len(g.options) == 4
    assert h.options is None

    saved = json.loads((world.store.path / REPORT_FILE).read_text())
    assert saved["scenarios"] == 13 and saved["accepted"] == 2
    assert saved["fell_at"] == {
        "not_rendered": 1,
        "well_formed": 0,
        "alignment": 1,
        "image_benign": 3,
        "text_benign": 1,
        "no_leakage": 2,
        "pair_hazard": 3,
    }
    assert sum(d["scenarios"] for d in saved["per_domain"].values()) == 13
    assert saved["per_domain"]["religion"]["not_rendered"] == 1
    assert fake_openai.max_in_flight > 1  # chat checks ran concurrently


def test_rerun_sends_no_request_and_writes_nothing(world, fake_openai):
    check(world.store, world.settings)
    accept(world.store, world.settings)
    hits, checks_text, cases_text = (
        fake_openai.hits,
        world.store.file_for(CheckResult).read_text(),
        world.store.file_for(Case).read_text(),
    )
    report = check(world.store, world.settings)
    assert not report.new and report.skipped > 0
    assert fake_openai.hits == hits
    assert world.store.file_for(CheckResult).read_text() == checks_text
    assert accept(world.store, world.settings).new_cases == 0
    assert world.store.file_for(Case).read_text() == cases_text


def test_retry_errors_runs_only_the_errored_check(world, fake_openai):
    check(world.store, world.settings)
    accept(world.store, world.settings)
    fixed_q = world.by_role["judge_error"].question
    world.judge_behaviour[fixed_q] = "hazard"
    fake_openai.reset_counts()
    report = check(world.store, world.settings, retry_errors=True)
    assert dict(report.new) == {"pair_hazard": 1}
    assert len(fake_openai.chat_requests()) == 2  # the pair question + the hazard match, nothing else
    fr = accept(world.store, world.settings)
    assert fr.outcomes[world.by_role["judge_error"].key] == "accepted" and fr.new_cases == 1


def test_without_the_funnel_every_check_runs(world, fake_openai):
    world.settings.check.stop_at_first_failure = False
    check(world.store, world.settings)
    mis = results(world.store)[world.by_role["misaligned"].key]
    assert {n for n, _ in mis} == {
        "well_formed",
        "alignment",
        "image_benign.clip",
        "image_benign.safety_checker",
        "image_benign.guard",
        "text_benign",
        "no_leakage.question",
        "no_leakage.description",
        "pair_hazard",
    }
    fr = accept(world.store, world.settings)
    assert {world.role_of(k): v for k, v in fr.outcomes.items()} == EXPECTED


def test_disabled_checks_are_not_required(world, fake_openai):
    world.settings.check.enabled = ["alignment", "text_benign"]
    check(world.store, world.settings)
    assert not [p for p, _ in fake_openai.requests if p.endswith("/chat/completions")]
    fr = accept(world.store, world.settings)
    accepted = {world.role_of(k) for k, v in fr.outcomes.items() if v == "accepted"}
    assert accepted == set(EXPECTED) - {"misaligned", "text_unsafe", "not_rendered"}


def test_missing_role_and_unknown_check_are_user_errors(world):
    world.settings.roles.vlm_checker = None
    with pytest.raises(UserError, match="pair_hazard needs roles.vlm_checker"):
        check(world.store, world.settings)
    world.settings.check.enabled = ["alignment", "vibes"]
    with pytest.raises(UserError, match="unknown check"):
        check(world.store, world.settings)


def test_unreadable_image_is_an_error_not_a_pass(world, fake_openai):
    good = world.by_role["good"]
    for r in world.store.read(Render):
        if r.scenario_id == good.key:
            world.store.resolve(r.path).write_bytes(b"not a png any more")
    check(world.store, world.settings)
    res = results(world.store)[good.key]
    assert res.pop(("well_formed", None)).passed is True  # its texts are fine; the image is what is broken
    assert all(r.passed is None and "cannot read image" in r.error for r in res.values())
    fr = accept(world.store, world.settings)
    assert fr.outcomes[good.key] == "alignment" and fr.reasons["alignment"]["error"] == 1


def test_checks_without_their_model_are_not_run_never_passed(world, fake_openai):
    """No CLIP weights: alignment and the CLIP screen are written as not run. By default a not-run family
    blocks every scenario; `check.required` names the families that must pass, and the others may not run."""
    world.settings.check = world.settings.check.model_copy(
        update=dict(
            clip_model=str(world.store.path / "no-such-clip.pt"),
            safety_checker=None,
            enabled=["alignment", "image_benign", "text_benign"],
        )
    )
    # without alignment the lowest candidate is the image: make guard_unsafe's candidate 0 the flagged one
    guard_unsafe = world.by_role["guard_unsafe"].key
    [r0] = [r for r in world.store.read(Render) if r.scenario_id == guard_unsafe and r.candidate == 0]
    world.flag_images.add(pixel_key(Image.open(world.store.resolve(r0.path))))
    report = check(world.store, world.settings)
    assert (
        set(report.not_run) == {"alignment", "image_benign.clip"} and "no CLIP weights" in report.not_run["alignment"]
    )
    assert "alignment: NOT RUN" in report.summary() and sum(report.errors.values()) == 0
    res = results(world.store)[world.by_role["good"].key]
    assert res[("alignment", 0)].passed is None and res[("alignment", 0)].not_run
    assert res[("image_benign.guard", 0)].passed is True  # the checks that can run still ran

    fr = accept(world.store, world.settings)  # default: every enabled family required
    assert fr.totals["accepted"] == 0 and fr.reasons["alignment"]["not_run"] == fr.totals["alignment"] > 0

    world.settings.check.required = ["image_benign", "text_benign"]
    fr = accept(world.store, world.settings)
    outcomes = {world.role_of(k): v for k, v in fr.outcomes.items()}
    assert outcomes["guard_unsafe"] == "image_benign" and outcomes["text_unsafe"] == "text_benign"
    assert outcomes["good"] == outcomes["misaligned"] == outcomes["clip_unsafe"] == "accepted"
    saved = json.loads((world.store.path / REPORT_FILE).read_text())
    assert set(saved["not_run"]) == {"alignment", "image_benign.clip"} and saved["required"] == [
        "image_benign",
        "text_benign",
    ]
    # the report opens with the same facts, in words
    notices = check_notices(world.store)
    assert any(n.startswith("Check alignment did NOT RUN") for n in notices)
    assert any(n.startswith("Check image_benign.clip did NOT RUN") for n in notices)
    assert "a demonstration of the pipeline, not a benchmark" in notices[-1]


def test_cli_check_without_a_role_prints_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("SIUO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    store = RunStore.open("c", root=tmp_path / "outputs")
    store.append(
        Scenario(
            domain="self-harm", image_prompt="p", image_description="d", question="q", hazard="h", reference_answer="r"
        )
    )
    result = CliRunner().invoke(app, ["check", "--run", "c"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "text_benign needs roles.text_guard" in result.output


# ----------------------------------------------------------------------------------------------------
# The models underneath
# ----------------------------------------------------------------------------------------------------


def test_clip_checkpoint_round_trip_and_batching(tiny_clip, scorer):
    import clip

    p = CLIP_PRESETS["tiny"]
    assert scorer.input_resolution == p["image_resolution"] and scorer.embed_dim == p["embed_dim"]
    assert len(scorer.model.visual.transformer.resblocks) == p["vision_layers"]
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(7)]
    batched = scorer.encode_images(images, batch_size=4)
    single = torch.cat([scorer.encode_images([im], batch_size=1) for im in images])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(7), atol=1e-5)
    # clip.load casts weights through fp16: close to the fp32 original, not equal
    original = make_clip("tiny")  # same seed as the saved checkpoint
    pixels = torch.stack([scorer.preprocess(im) for im in images])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(original.encode_image(pixels).float(), dim=-1)
        ref_text = torch.nn.functional.normalize(
            original.encode_text(clip.tokenize(["a roof", "a dog"])).float(), dim=-1
        )
    assert (batched - ref).abs().max() < 5e-2
    assert (scorer.encode_texts(["a roof", "a dog"]) - ref_text).abs().max() < 5e-2
    probs = scorer.zero_shot(batched, ["a", "b", "c"])
    assert probs.shape == (7, 3) and torch.allclose(probs.sum(-1), torch.ones(7), atol=1e-5)


def test_safety_checker_agrees_with_diffusers_forward(tmp_path):
    checker, processor = make_safety_checker(seed=3)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    images += [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 0), (250, 250, 250)]]
    ours = SafetyChecker(checker, processor, "tiny")
    margins = sorted(s.score for s in ours.score(images))
    gap, cut = max((margins[i + 1] - margins[i], i) for i in range(5))
    assert gap > 0.004
    with torch.no_grad():  # move every threshold into the widest gap: the images above it fire
        checker.concept_embeds_weights += (margins[cut] + margins[cut + 1]) / 2
    folder = save_safety_checker(tmp_path / "sc", checker, processor)
    loaded = SafetyChecker.load(str(folder), device="cpu", batch_size=4)
    verdicts = [s.flagged for s in loaded.score(images)]
    pixels = processor(images=images, return_tensors="pt").pixel_values
    _, nsfw = checker(clip_input=pixels, images=np.zeros((6, 2, 2, 3)))
    assert verdicts == list(nsfw) and sum(verdicts) == 5 - cut


def test_mcqa_options_put_the_reference_answer_at_a_stable_letter():
    letters = set()
    for i in range(12):
        s = Scenario(
            domain="morality",
            image_prompt=f"p{i}",
            image_description="d",
            question="q",
            hazard="h",
            reference_answer="SAFE",
            mcqa_distractors=["u", "v", "w"],
        )
        options, correct = mcqa_options(s)
        assert options[correct] == "SAFE" and sorted(options.values()) == ["SAFE", "u", "v", "w"]
        assert mcqa_options(s) == (options, correct)
        letters.add(correct)
    assert len(letters) > 1


def test_cli_check_and_accept_end_to_end(world, fake_openai, tmp_path, monkeypatch):
    import tomli_w

    config = tmp_path / "siuo.toml"
    config.write_text(tomli_w.dumps(world.settings.model_dump(mode="json", exclude_none=True)))
    monkeypatch.setenv("SIUO_OUTPUTS", str(world.store.path.parent))
    runner = CliRunner()
    result = runner.invoke(app, ["check", "--run", world.store.name, "--config", str(config)])
    assert result.exit_code == 3, result.output  # one check could not get a verdict: said in the exit code
    assert "pair_hazard: 5 new (2 failed, 1 errors)" in result.output
    assert "1 of" in result.output and "check(s) failed" in result.output and "--retry-errors" in result.output
    result = runner.invoke(app, ["accept", "--run", world.store.name, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "2 new cases" in result.output and "filter report" in result.output
    total = next(line for line in result.output.splitlines() if line.strip().startswith("│ total") or " total " in line)
    assert "13" in total
