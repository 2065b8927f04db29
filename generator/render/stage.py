"""Stage `render`: scenarios -> image candidates (PNG files under images/ + one `Render` record each).

Three sources, one record shape:

- `diffusers`: a local text-to-image pipeline (hub id or folder, see `generator.models.diffusion`),
  prompts batched `render.batch` at a time, one seeded generator per image. The seed of candidate k of a
  scenario is derived from `render.base_seed`, the scenario key and k (`candidate_seed`), so any image
  is re-made exactly from its record.
- `images_api`: an OpenAI-compatible images endpoint through the model door (role `images`).
- `photos`: a folder of real photos (SIUO's own images are real photos): for each scenario the K photos
  whose CLIP embedding is closest to its `image_description`. With no `photos_dir`, the packaged pool
  (`generator.render.photo_pool`: real photos shipped inside installed wheels) is used instead, matched by
  caption text (no CLIP weights needed). Either way a picked photo is copied into the run folder,
  content-addressed (`images/photo-<sha256>.<ext>`, written once per distinct file, atomically), and the
  record points at the copy, with the original in `source`: a run holds every image it uses, so the
  review app (which serves only files inside the run) shows it and a rebuilt venv or a tidied photo
  folder does not break the run.

Resumable: a candidate whose `Render` key is already written (or whose failure is recorded, unless
`retry_failed`) is skipped, and the model is not even loaded when nothing is left to do. PNGs are written
to a hidden temp name and renamed, so a killed run leaves no half file that looks finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from generator.config import Settings
from generator.errors import UserError
from generator.progress import stage_progress
from generator.records import Failure, Render, RenderBackend, Scenario, stable_key
from generator.stage_report import StageOutcome
from generator.store import TMP_SUFFIX, RunStore, atomic_writer

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
STAGE = "render"


@dataclass
class RenderReport:
    backend: str
    model: str
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = f", {self.rendered / self.seconds:.2f} images/s" if self.rendered and self.seconds else ""
        return (
            f"render ({self.backend}, {self.model}): {self.rendered} new, {self.skipped} already done, "
            f"{self.failed} failed{rate}"
        )

    def outcome(self) -> StageOutcome:
        return StageOutcome(
            summary=[self.summary()], failed=self.failed, asked=self.rendered + self.failed, what="image(s)"
        )


@dataclass(frozen=True)
class _Work:
    scenario: Scenario
    candidate: int
    key: str


def candidate_seed(base_seed: int, scenario_key: str, candidate: int) -> int:
    """The seed of one candidate image: stable across runs, machines and batch sizes."""
    return int(stable_key(base_seed, scenario_key, candidate), 16) % (2**31 - 1)


def image_name(scenario_key: str, candidate: int, render_key: str) -> str:
    """File name of a rendered candidate (the render key's hash keeps two models' images apart)."""
    return f"{scenario_key}_c{candidate}_{render_key.removeprefix('rd-')[:8]}.png"


def write_png_atomic(path: Path, image: Any = None, png_bytes: bytes | None = None, meta: dict | None = None) -> None:
    """Write a PNG under a hidden temp name, then rename: a reader never sees half a file."""
    from PIL import Image, PngImagePlugin

    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        if png_bytes is not None:
            image = Image.open(io.BytesIO(png_bytes))
            image.load()
        info = PngImagePlugin.PngInfo()
        if meta:
            info.add_text("siuo:render", json.dumps(meta, sort_keys=True))
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _scenarios(store: RunStore) -> list[Scenario]:
    scenarios = [s for s in store.read(Scenario) if s.status != "duplicate"]
    if not scenarios:
        raise UserError(f"{store.file_for(Scenario)}: no scenarios to render (run `siuo propose` first)")
    return scenarios


def _pending(
    store: RunStore,
    scenarios: Sequence[Scenario],
    candidates: int,
    backend: RenderBackend,
    model: str,
    retry_failed: bool,
) -> tuple[list[_Work], int]:
    done = store.done_keys(Render)
    if not retry_failed:
        done |= {f.work_key for f in store.read(Failure) if f.stage == STAGE}
    todo: list[_Work] = []
    skipped = 0
    for s in scenarios:
        for k in range(candidates):
            key = Render(scenario_id=s.key, candidate=k, backend=backend, model=model, path="").key
            if key in done:
                skipped += 1
            else:
                todo.append(_Work(s, k, key))
    return todo, skipped


def _chunks(items: Sequence[_Work], size: int) -> Iterator[Sequence[_Work]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fail(store: RunStore, report: RenderReport, work: _Work, reason: str, model: str) -> None:
    store.put(
        Failure(
            stage=STAGE,
            work_key=work.key,
            reason=reason,
            model=model,
            raw=json.dumps({"scenario_id": work.scenario.key, "candidate": work.candidate}),
        )
    )
    report.failed += 1
    report.failures.append(f"{work.scenario.key} c{work.candidate}: {reason}")


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------


def render(
    store: RunStore,
    settings: Settings,
    *,
    retry_failed: bool = False,
    console: Console | None = None,
    text_to_image: Any = None,
    loader: Any = None,
) -> RenderReport:
    """Render (or pick) `render.candidates` images per scenario with `render.backend`.

    `text_to_image`: an already loaded `TextToImage` for the local executor (benchmarks, tests);
    `loader`: a picklable zero-argument callable that loads one (run once per Ray actor); None for both
    loads `render.model`. Where the diffusers pipeline runs is `settings.executor` (see `generator.executors`).
    """
    rs = settings.render
    scenarios = _scenarios(store)
    with store.stage(STAGE) as entry:
        if rs.backend == "diffusers":
            report = _render_diffusers(store, settings, scenarios, retry_failed, console, text_to_image, loader)
        elif rs.backend == "images_api":
            report = asyncio.run(_render_images_api(store, settings, scenarios, retry_failed, console))
        elif rs.backend == "photos":
            report = _pick_photos(store, settings, scenarios, retry_failed, console)
        else:  # pragma: no cover - the config's Literal forbids it
            raise UserError(f"render.backend: unknown backend {rs.backend!r}")
        entry.counts.update(rendered=report.rendered, skipped=report.skipped, failed=report.failed)
    with store.update_manifest() as m:
        m.models["render"] = report.model
        m.seeds["render"] = {"base_seed": rs.base_seed, "rule": "candidate_seed(base_seed, scenario_key, k)"}
    return report


def _render_diffusers(
    store: RunStore,
    settings: Settings,
    scenarios: list[Scenario],
    retry_failed: bool,
    console: Console | None,
    text_to_image: Any,
    loader: Any = None,
) -> RenderReport:
    from generator import executors
    from generator.models.diffusion import TextToImage

    rs = settings.render
    model = text_to_image.model if text_to_image is not None else _model_id(rs.model)
    report = RenderReport("diffusers", model)
    todo, report.skipped = _pending(store, scenarios, rs.candidates, "diffusers", model, retry_failed)
    if not todo:
        return report
    # Where the pipeline runs is the executor's business (here, or one copy per Ray actor); the batches
    # are composed here, the same for both, and every record is written here, by this one process.
    loader = loader or executors.Loader(
        TextToImage.load, (model,), dict(device=rs.device, dtype=rs.dtype, cpu_offload=rs.cpu_offload)
    )
    batches = list(_chunks(todo, rs.batch))
    jobs = [
        [(w.scenario.image_prompt, candidate_seed(rs.base_seed, w.scenario.key, w.candidate)) for w in batch]
        for batch in batches
    ]
    generate = GenerateBatch(steps=rs.steps, guidance_scale=rs.guidance_scale, width=rs.width, height=rs.height)
    images_dir = store.images_dir
    with stage_progress(console) as progress:
        task = progress.add_task(f"render {len(todo)} images", total=len(todo))
        for i, result in executors.map_batches(settings, loader, generate, jobs, loaded=text_to_image):
            batch = batches[i]
            if isinstance(result, Exception):  # recorded per image; the next batch may still work
                log.warning("render batch failed: %s", result)
                for w in batch:
                    _fail(store, report, w, f"{type(result).__name__}: {result}"[:500], model)
                progress.advance(task, len(batch))
                continue
            elapsed = result[0][1]
            report.seconds += elapsed
            records = []
            for w, (_, seed), (image, _) in zip(batch, jobs[i], result):
                name = image_name(w.scenario.key, w.candidate, w.key)
                meta = dict(
                    model=model,
                    seed=seed,
                    steps=rs.steps,
                    guidance_scale=rs.guidance_scale,
                    prompt=w.scenario.image_prompt,
                )
                write_png_atomic(images_dir / name, image, meta=meta)
                records.append(
                    Render(
                        key=w.key,
                        scenario_id=w.scenario.key,
                        candidate=w.candidate,
                        backend="diffusers",
                        model=model,
                        path=f"images/{name}",
                        seed=seed,
                        steps=rs.steps,
                        guidance_scale=rs.guidance_scale,
                        width=image.width,
                        height=image.height,
                        seconds=round(elapsed / len(batch), 4),
                    )
                )
            # A batch's records land together: after a kill the resume re-renders whole batches, so the
            # batches (and with them the last bit of every pixel) are the same as an uninterrupted run's.
            report.rendered += store.append_many(records)
            progress.advance(task, len(batch))
    return report


@dataclass(frozen=True)
class GenerateBatch:
    """The render batch function: one pipeline call for a batch of (prompt, seed); each image comes back
    with the batch's seconds. Picklable, so a Ray actor runs exactly what the local executor runs."""

    steps: int
    guidance_scale: float
    width: int
    height: int

    def __call__(self, t2i: Any, jobs: Sequence[tuple[str, int]]) -> list:
        started = time.perf_counter()
        images = t2i.generate(
            [p for p, _ in jobs],
            [s for _, s in jobs],
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            width=self.width,
            height=self.height,
        )
        elapsed = time.perf_counter() - started
        return [(image, elapsed) for image in images]


def _model_id(model: str) -> str:
    """A local folder as an absolute path (so the record is unambiguous), a hub id as is."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


async def _render_images_api(
    store: RunStore, settings: Settings, scenarios: list[Scenario], retry_failed: bool, console: Console | None
) -> RenderReport:
    from PIL import Image

    from generator.models import BudgetExceeded, ModelHub

    rs = settings.render
    hub = ModelHub(settings, store=store)
    async with hub:
        client = hub.images("images")
        model = client.model
        report = RenderReport("images_api", model)
        todo, report.skipped = _pending(store, scenarios, rs.candidates, "images_api", model, retry_failed)
        by_scenario: dict[str, list[_Work]] = {}
        for w in todo:
            by_scenario.setdefault(w.scenario.key, []).append(w)
        images_dir = store.images_dir
        size = f"{rs.width}x{rs.height}"

        async def one(works: list[_Work]) -> None:
            scenario = works[0].scenario
            started = time.perf_counter()
            try:
                pngs = await client.generate(scenario.image_prompt, n=len(works), size=size)
            except BudgetExceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - ModelError and friends: recorded, never dropped
                for w in works:
                    _fail(store, report, w, f"{type(exc).__name__}: {exc}"[:500], model)
                return
            elapsed = time.perf_counter() - started
            for i, w in enumerate(works):
                if i >= len(pngs):
                    _fail(store, report, w, f"endpoint returned {len(pngs)} images for n={len(works)}", model)
                    continue
                name = image_name(scenario.key, w.candidate, w.key)
                try:
                    write_png_atomic(
                        images_dir / name, png_bytes=pngs[i], meta=dict(model=model, prompt=scenario.image_prompt)
                    )
                except Exception as exc:  # noqa: BLE001 - not an image: recorded
                    _fail(store, report, w, f"endpoint returned bytes that are not an image: {exc}"[:500], model)
                    continue
                with Image.open(images_dir / name) as im:
                    width, height = im.size
                store.append(
                    Render(
                        key=w.key,
                        scenario_id=scenario.key,
                        candidate=w.candidate,
                        backend="images_api",
                        model=model,
                        path=f"images/{name}",
                        width=width,
                        height=height,
                        seconds=round(elapsed / len(works), 4),
                    )
                )
                report.rendered += 1

        started = time.perf_counter()
        with stage_progress(console) as progress:
            task = progress.add_task(f"images API: {len(todo)} images", total=len(by_scenario))

            async def tracked(works: list[_Work]) -> None:
                await one(works)
                progress.advance(task)

            await asyncio.gather(*(tracked(ws) for ws in by_scenario.values()))
        report.seconds = time.perf_counter() - started
    return report


def copy_photo_into_run(store: RunStore, photo: Path, copied: dict[Path, str]) -> str:
    """The run-relative path of `photo`'s copy inside the run (`images/photo-<sha256><ext>`), written
    atomically the first time its content is seen; `copied` remembers files already copied this call, so
    a photo picked by many scenarios is read and hashed once."""
    if photo in copied:
        return copied[photo]
    try:
        data = photo.read_bytes()
    except OSError as exc:
        raise UserError(f"{photo}: cannot read the photo: {exc.strerror or exc}") from None
    suffix = {".jpeg": ".jpg"}.get(photo.suffix.lower(), photo.suffix.lower()) or ".img"
    relative = f"images/photo-{hashlib.sha256(data).hexdigest()}{suffix}"
    target = store.path / relative
    if not (target.is_file() and target.stat().st_size == len(data)):
        store.images_dir  # noqa: B018 - makes images/ if the run has none yet
        with atomic_writer(target, "wb") as fh:
            fh.write(data)
    copied[photo] = relative
    return relative


def list_photos(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
    )


def _pick_photos(
    store: RunStore, settings: Settings, scenarios: list[Scenario], retry_failed: bool, console: Console | None
) -> RenderReport:
    from PIL import Image

    from generator.models.clip_model import ClipScorer

    rs = settings.render
    if not rs.photos_dir:
        return _pick_pool_photos(store, settings, scenarios, retry_failed)
    folder = Path(rs.photos_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{folder}: photo folder not found")
    model = f"photos:{folder}|clip:{settings.check.clip_model}"
    report = RenderReport("photos", model)
    todo, report.skipped = _pending(store, scenarios, rs.candidates, "photos", model, retry_failed)
    if not todo:
        return report
    photos = []
    for p in list_photos(folder):
        try:
            with Image.open(p) as im:
                im.verify()
            photos.append(p)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is skipped, with a warning
            log.warning("%s: skipped, not a readable image (%s)", p, exc)
    if len(photos) < rs.candidates:
        raise UserError(f"{folder}: {len(photos)} readable photos, fewer than render.candidates={rs.candidates}")
    started = time.perf_counter()
    scorer = ClipScorer.load(settings.check.clip_model, batch_size=settings.check.batch)
    with stage_progress(console) as progress:
        task = progress.add_task(f"embed {len(photos)} photos", total=len(photos))
        embs = []
        for start in range(0, len(photos), scorer.batch_size):
            chunk = photos[start : start + scorer.batch_size]
            embs.append(scorer.encode_images(chunk))
            progress.advance(task, len(chunk))
    import torch

    photo_emb = torch.cat(embs)
    wanted = list(dict.fromkeys(w.scenario.key for w in todo))
    by_key = {s.key: s for s in scenarios}
    text_emb = scorer.encode_texts([by_key[k].image_description for k in wanted])
    ranking = scorer.cosine(text_emb, photo_emb).argsort(dim=-1, descending=True)
    row = {k: i for i, k in enumerate(wanted)}
    copied: dict[Path, str] = {}
    for w in todo:
        photo = photos[int(ranking[row[w.scenario.key], w.candidate])]
        _record_photo(store, w, model, photo, copied, source=str(photo))
        report.rendered += 1
    report.seconds = time.perf_counter() - started
    return report


def _record_photo(
    store: RunStore,
    work: _Work,
    model: str,
    photo: Path,
    copied: dict[Path, str],
    source: str,
    licence: str | None = None,
) -> None:
    """A picked photo's Render record, for both photo backends: its size, and its path as copied into the run."""
    from PIL import Image

    with Image.open(photo) as im:
        width, height = im.size
    store.append(
        Render(
            key=work.key,
            scenario_id=work.scenario.key,
            candidate=work.candidate,
            backend="photos",
            model=model,
            path=copy_photo_into_run(store, photo, copied),
            width=width,
            height=height,
            source=source,
            licence=licence,
        )
    )


def _pick_pool_photos(
    store: RunStore, settings: Settings, scenarios: list[Scenario], retry_failed: bool
) -> RenderReport:
    """The packaged pool, ranked by caption text match (see `generator.render.photo_pool`)."""

    from generator.models.embeddings import load_embedder
    from generator.render.photo_pool import POOL, rank

    rs = settings.render
    if rs.candidates > len(POOL):
        raise UserError(f"render.candidates={rs.candidates} is more than the {len(POOL)} photos of the packaged pool")
    model = f"photos:packaged-pool|text:{settings.propose.embedder}"
    report = RenderReport("photos", model)
    todo, report.skipped = _pending(store, scenarios, rs.candidates, "photos", model, retry_failed)
    if not todo:
        return report
    started = time.perf_counter()
    wanted = list(dict.fromkeys(w.scenario.key for w in todo))
    by_key = {s.key: s for s in scenarios}
    ranked = dict(
        zip(wanted, rank([by_key[k].image_description for k in wanted], load_embedder(settings.propose.embedder)))
    )
    copied: dict[Path, str] = {}
    for w in todo:
        photo = ranked[w.scenario.key][w.candidate]
        _record_photo(store, w, model, photo.path(), copied, source=photo.source, licence=photo.licence)
        report.rendered += 1
    report.seconds = time.perf_counter() - started
    return report
