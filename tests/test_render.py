"""Stage `render` with a tiny random-weight diffusers pipeline (saved to a folder, loaded back through
`TextToImage.load`, as a user's model is), the images API on the loopback server, and a photo folder
picked by a tiny random CLIP. Nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import UserError
from generator.models.clip_model import ClipScorer
from generator.models.diffusion import ModelLoadError, TextToImage
from generator.records import Failure, Render, Scenario
from generator.render.stage import candidate_seed, image_name, render, write_png_atomic
from generator.store import RunStore
from generator.testing.fake_openai import Fault
from generator.testing.tiny_models import save_clip, save_sd_pipeline

SIZE = 32


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A random-weight StableDiffusionPipeline folder, shipped with a (tiny) safety checker as real SD repos are."""
    return save_sd_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", "tiny", with_safety_checker=True)


@pytest.fixture(scope="session")
def tiny_t2i(tiny_sd) -> TextToImage:
    return TextToImage.load(str(tiny_sd), device="cpu")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("models") / "tiny-clip.pt", "tiny")


def scenario(i: int, **kw) -> Scenario:
    data = dict(
        domain="dangerous-behavior",
        image_prompt=f"a photo of scene {i}, daylight",
        image_description=f"scene {i}",
        question=f"question {i}?",
        hazard=f"hazard {i}",
        reference_answer="a safe answer",
    )
    data.update(kw)
    return Scenario(**data)


@pytest.fixture
def store(tmp_path) -> RunStore:
    s = RunStore.open("r", root=tmp_path / "outputs")
    s.append_many([scenario(i) for i in range(3)])
    s.append(scenario(99, status="duplicate"))
    return s


def diffusers_settings(fake_openai, model: Path, **render):
    s = fake_openai.settings(cache=False)
    update = dict(
        backend="diffusers", model=str(model), candidates=2, steps=1, batch=3, width=SIZE, height=SIZE, device="cpu"
    )
    s.render = s.render.model_copy(update={**update, **render})
    return s


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


# ----------------------------------------------------------------------------------------------------
# diffusers
# ----------------------------------------------------------------------------------------------------


def test_loader_switches_off_the_pipeline_safety_checker(tiny_sd, tiny_t2i):
    assert (tiny_sd / "safety_checker").is_dir()  # the folder ships one ...
    assert tiny_t2i.has_safety_checker is False  # ... and the render pipeline never blacks an image out
    assert tiny_t2i.device == "cpu" and str(tiny_t2i.dtype) == "torch.float32"


def test_render_writes_one_png_and_record_per_candidate(store, fake_openai, tiny_sd):
    settings = diffusers_settings(fake_openai, tiny_sd)
    report = render(store, settings)
    assert (report.rendered, report.skipped, report.failed) == (6, 0, 0)
    renders = store.read(Render)
    assert len(renders) == 6
    dup = [s for s in store.read(Scenario) if s.status == "duplicate"][0]
    assert dup.key not in {r.scenario_id for r in renders}
    for r in renders:
        assert r.backend == "diffusers" and r.model == str(tiny_sd.resolve())
        assert (r.steps, r.width, r.height) == (1, SIZE, SIZE) and r.seconds and r.seconds > 0
        assert r.seed == candidate_seed(0, r.scenario_id, r.candidate)
        assert r.path == f"images/{image_name(r.scenario_id, r.candidate, r.key)}"
        with Image.open(store.resolve(r.path)) as im:
            assert im.format == "PNG" and im.size == (SIZE, SIZE)
            assert json.loads(im.text["siuo:render"])["seed"] == r.seed
    assert not [p for p in store.images_dir.iterdir() if p.name.startswith(".")]  # no temp file left
    # two candidates of one scenario differ (different seeds)
    by = {(r.scenario_id, r.candidate): r for r in renders}
    sid = renders[0].scenario_id
    assert np.abs(pixels(store.resolve(by[sid, 0].path)) - pixels(store.resolve(by[sid, 1].path))).max() > 0
    manifest = store.load_manifest()
    assert manifest.models["render"] == str(tiny_sd.resolve()) and manifest.stages["render"].counts["rendered"] == 6


@pytest.mark.slow
def test_every_image_can_be_remade_from_its_record(store, fake_openai, tiny_sd, tiny_t2i):
    render(store, diffusers_settings(fake_openai, tiny_sd))  # batches of 3 mixed prompts
    scenarios = {s.key: s for s in store.read(Scenario)}
    for r in store.read(Render)[:3]:
        [again] = tiny_t2i.generate(
            [scenarios[r.scenario_id].image_prompt],
            [r.seed],
            steps=r.steps,
            guidance_scale=r.guidance_scale,
            width=r.width,
            height=r.height,
        )
        assert np.abs(np.asarray(again).astype(int) - pixels(store.resolve(r.path))).max() <= 1


def test_rerun_skips_done_work_and_extends_candidates(store, fake_openai, tiny_sd, monkeypatch):
    settings = diffusers_settings(fake_openai, tiny_sd, candidates=1)
    assert render(store, settings).rendered == 3
    first = {r.key: os.stat(store.resolve(r.path)).st_mtime_ns for r in store.read(Render)}

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded when nothing is left to render")

    monkeypatch.setattr(TextToImage, "load", classmethod(no_load))
    report = render(store, settings)
    assert (report.rendered, report.skipped) == (0, 3)
    monkeypatch.undo()

    report = render(store, settings.model_copy(update={"render": settings.render.model_copy(update={"candidates": 2})}))
    assert (report.rendered, report.skipped) == (3, 3)
    renders = store.read(Render)
    assert sorted(r.candidate for r in renders) == [0, 0, 0, 1, 1, 1]
    assert {r.key: os.stat(store.resolve(r.path)).st_mtime_ns for r in renders if r.key in first} == first
    assert len(store.file_for(Render).read_text().splitlines()) == 6  # no duplicate line


def test_failed_batch_is_recorded_and_skipped_until_retried(store, fake_openai, tiny_sd, tiny_t2i):
    class Broken:
        model = "broken-model"

        def generate(self, *a, **k):
            raise RuntimeError("CUDA out of memory (simulated)")

    settings = diffusers_settings(fake_openai, tiny_sd, candidates=1)
    report = render(store, settings, text_to_image=Broken())
    assert (report.rendered, report.failed) == (0, 3)
    failures = store.read(Failure)
    assert len(failures) == 3 and all("out of memory" in f.reason and f.stage == "render" for f in failures)
    assert render(store, settings, text_to_image=Broken()).failed == 0  # recorded failures are not retried blindly

    class Works:
        model = "broken-model"
        generate = staticmethod(tiny_t2i.generate)

    report = render(store, settings, retry_failed=True, text_to_image=Works())
    assert report.rendered == 3 and len(store.read(Render)) == 3


def test_png_write_is_atomic(tmp_path):
    class Explodes:
        def save(self, fp, format=None, pnginfo=None):  # noqa: A002
            Path(fp).write_bytes(b"\x89PNG half a file")
            raise OSError("disk full (simulated)")

    target = tmp_path / "x.png"
    with pytest.raises(OSError):
        write_png_atomic(target, Explodes())
    assert list(tmp_path.iterdir()) == []  # neither a half PNG nor a temp file


def test_missing_model_is_a_clear_user_error(store, fake_openai):
    settings = diffusers_settings(fake_openai, Path("stabilityai/sd-turbo"))
    settings.render.model = "stabilityai/sd-turbo"
    with pytest.raises(ModelLoadError) as err:
        render(store, settings)
    message = str(err.value)
    assert "--model /path/to/folder" in message and "HF_HUB_OFFLINE" in message and "render.model" in message
    assert isinstance(err.value, UserError)


def test_cli_render_missing_model_prints_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("SIUO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    RunStore.open("cli", root=tmp_path / "outputs").append(scenario(1))
    result = CliRunner().invoke(app, ["render", "--run", "cli", "--model", "nobody/no-such-model", "--device", "cpu"])
    assert result.exit_code == 2
    out = result.output
    assert "Traceback" not in out and "could not load diffusion model 'nobody/no-such-model'" in out
    assert "--model /path/to/folder" in out


def test_cli_render_with_a_local_folder(tmp_path, monkeypatch, tiny_sd):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("SIUO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    store = RunStore.open("cli", root=tmp_path / "outputs")
    store.append(scenario(1))
    (tmp_path / "siuo.toml").write_text(f"[render]\nwidth = {SIZE}\nheight = {SIZE}\n")
    result = CliRunner().invoke(
        app,
        [
            "render",
            "--run",
            "cli",
            "--model",
            str(tiny_sd),
            "--candidates",
            "2",
            "--steps",
            "1",
            "--batch",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 new" in result.output and len(store.read(Render)) == 2


# ----------------------------------------------------------------------------------------------------
# images API
# ----------------------------------------------------------------------------------------------------


def colour_png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_images_api_backend(store, fake_openai):
    colours = iter([(i * 20, 100, 200) for i in range(12)])
    fake_openai.on_image(lambda body: colour_png(next(colours)))
    settings = fake_openai.settings(cache=False)
    settings.render = settings.render.model_copy(
        update=dict(backend="images_api", candidates=2, width=SIZE, height=SIZE)
    )
    report = render(store, settings)
    assert (report.rendered, report.failed, report.model) == (6, 0, "fake-image-model")
    bodies = [b for p, b in fake_openai.requests if p.endswith("/images/generations")]
    assert len(bodies) == 3 and all(b["n"] == 2 and b["size"] == f"{SIZE}x{SIZE}" for b in bodies)
    prompts = {s.image_prompt for s in store.read(Scenario) if s.status == "ok"}
    assert {b["prompt"] for b in bodies} == prompts
    for r in store.read(Render):
        assert r.backend == "images_api" and r.seed is None and (r.width, r.height) == (16, 16)
        assert pixels(store.resolve(r.path)).shape == (16, 16, 3)
    hits = fake_openai.hits
    assert render(store, settings).rendered == 0 and fake_openai.hits == hits  # resume: no request


def test_images_api_failure_is_recorded(store, fake_openai):
    fake_openai.on_image(lambda body: Fault.status(400, message="prompt rejected"))
    settings = fake_openai.settings(cache=False)
    settings.render = settings.render.model_copy(update=dict(backend="images_api", candidates=1))
    report = render(store, settings)
    assert (report.rendered, report.failed) == (0, 3)
    assert all("prompt rejected" in f.reason or "400" in f.reason for f in store.read(Failure))


# ----------------------------------------------------------------------------------------------------
# photo folder
# ----------------------------------------------------------------------------------------------------


def test_photos_backend_picks_the_closest_photos_by_clip(store, fake_openai, tiny_clip, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            photos / ("sub" if i % 2 else "") / f"p{i}.png"
        )
    (photos / "notes.txt").write_text("not a photo")
    (photos / "broken.png").write_bytes(b"not a png")
    settings = fake_openai.settings(cache=False)
    settings.render = settings.render.model_copy(update=dict(backend="photos", candidates=2, photos_dir=str(photos)))
    settings.check.clip_model = str(tiny_clip)
    report = render(store, settings)
    assert report.rendered == 6
    # the same choice computed directly: the two photos with the highest CLIP cosine to the description
    scorer = ClipScorer.load(str(tiny_clip), device="cpu")
    files = sorted(p for p in photos.rglob("p*.png"))
    emb = scorer.encode_images(files)
    for s in (s for s in store.read(Scenario) if s.status == "ok"):
        sims = (scorer.encode_texts([s.image_description]) @ emb.T)[0]
        best = [str(files[int(i)]) for i in sims.argsort(descending=True)[:2]]
        picked = sorted((r for r in store.read(Render) if r.scenario_id == s.key), key=lambda r: r.candidate)
        assert [r.source for r in picked] == best
        assert all(r.backend == "photos" for r in picked)
        # the record points at a copy inside the run, byte for byte the picked photo
        assert all(store.resolve(r.path).read_bytes() == Path(r.source).read_bytes() for r in picked)
        assert all(store.path.resolve() in store.resolve(r.path).resolve().parents for r in picked)
    assert render(store, settings).rendered == 0


def test_photos_backend_without_a_folder_picks_from_the_packaged_pool_by_caption(tmp_path, fake_openai):
    """No photos_dir: real packaged photos, chosen by caption text match, with source and licence recorded."""
    store = RunStore.open("r", root=tmp_path / "outputs")
    store.append_many(
        [
            scenario(1, image_description="a tabby cat sitting on a sofa at home"),
            scenario(2, image_description="a rocket lifting off from the launch pad in fire and smoke"),
        ]
    )
    settings = fake_openai.settings(cache=False)
    settings.render = settings.render.model_copy(update=dict(backend="photos", candidates=2, photos_dir=None))
    report = render(store, settings)
    assert report.rendered == 4 and report.failed == 0
    renders = {(r.scenario_id, r.candidate): r for r in store.read(Render)}
    by_desc = {s.image_description: s.key for s in store.read(Scenario)}
    cat = renders[(by_desc["a tabby cat sitting on a sofa at home"], 0)]
    rocket = renders[(by_desc["a rocket lifting off from the launch pad in fire and smoke"], 0)]
    assert cat.source == "skimage.data:chelsea.png" and cat.licence.startswith("CC0")
    assert rocket.source == "skimage.data:rocket.jpg" and "public domain" in rocket.licence
    for r in renders.values():
        assert r.source and r.licence and store.resolve(r.path).is_file() and r.width and r.height
        with Image.open(store.resolve(r.path)) as im:
            assert im.size == (r.width, r.height)
    # the provenance is in the file on disk, not only in memory
    rows = [json.loads(line) for line in store.file_for(Render).read_text().splitlines()]
    assert all(row["source"] and row["licence"] for row in rows)
    assert render(store, settings).rendered == 0


def test_picked_pool_photos_are_copied_into_the_run_once_per_file(tmp_path, fake_openai):
    """Render records used to point into site-packages: the review app (serving only files inside the run)
    showed a broken image on every case, and a rebuilt venv broke the run. Now every path is a
    content-addressed copy inside the run folder, and two cases picking the same photo share one file."""
    from generator.render.photo_pool import POOL

    store = RunStore.open("r", root=tmp_path / "outputs")
    # two scenarios that both want the cat (candidate 0): the same photo, picked twice
    store.append_many(
        [
            scenario(1, image_description="a tabby cat sitting on a sofa at home"),
            scenario(2, image_description="a tabby cat indoors looking to the side"),
        ]
    )
    settings = fake_openai.settings(cache=False)
    settings.render = settings.render.model_copy(update={"backend": "photos", "candidates": 2, "photos_dir": None})
    assert render(store, settings).rendered == 4
    renders = store.read(Render)
    run = store.path.resolve()
    for r in renders:
        assert not Path(r.path).is_absolute() and r.path.startswith("images/photo-")
        copy = store.resolve(r.path).resolve()
        assert run in copy.parents and copy.is_file()
        original = next(p for p in POOL if p.source == r.source).path()
        assert copy.read_bytes() == original.read_bytes()
        assert copy.stem == "photo-" + hashlib.sha256(copy.read_bytes()).hexdigest()
    chelsea = [r for r in renders if r.source == "skimage.data:chelsea.png"]
    assert len(chelsea) == 2 and len({r.path for r in chelsea}) == 1  # one file, shared
    assert len(list(store.images_dir.glob("photo-*"))) == len({r.source for r in renders})
    assert not list(store.images_dir.glob(".*"))  # no temp file left behind


def test_candidate_seed_is_stable_and_distinct():
    assert candidate_seed(0, "sc-a", 0) == candidate_seed(0, "sc-a", 0)
    seeds = {candidate_seed(b, s, k) for b in (0, 1) for s in ("sc-a", "sc-b") for k in range(3)}
    assert len(seeds) == 12 and all(0 <= x < 2**31 for x in seeds)
