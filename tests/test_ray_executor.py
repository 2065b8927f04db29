"""The Ray executor (`[executor] kind = "ray"`) on a small local Ray instance: the same Render and
CheckResult records as the local executor, a killed driver resumes to the identical set, and an actor
killed mid-batch has its batch retried with no record written twice. Tiny random-weight models only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow  # a Ray cluster starts per module (~10 s) and actors are killed on purpose

from generator import executors  # noqa: E402
from generator.checks.stage import check  # noqa: E402
from generator.config import Settings  # noqa: E402
from generator.models.diffusion import TextToImage  # noqa: E402
from generator.records import CheckResult, Render, Scenario  # noqa: E402
from generator.render.stage import render  # noqa: E402
from generator.store import RunStore  # noqa: E402
from generator.testing.ray_faults import DiesOnceLoader  # noqa: E402
from generator.testing.tiny_models import save_clip, save_safety_checker, save_sd_pipeline  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def ray_local():
    """One small Ray instance for the module: 2 CPUs, no dashboard, no usage report, no network."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env=executors._runtime_env(),
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return dict(
        sd=save_sd_pipeline(root / "tiny-sd", "tiny"),
        clip=save_clip(root / "tiny-clip.pt", "tiny"),
        safety=save_safety_checker(root / "tiny-safety"),
    )


def settings_for(models: dict[str, Path], kind: str, **render_kw) -> Settings:
    s = Settings()
    s.render = s.render.model_copy(
        update=dict(
            backend="diffusers",
            model=str(models["sd"]),
            candidates=2,
            steps=1,
            batch=2,
            width=SIZE,
            height=SIZE,
            device="cpu",
            **render_kw,
        )
    )
    s.check = s.check.model_copy(
        update=dict(
            clip_model=str(models["clip"]),
            enabled=["alignment", "image_benign"],
            safety_checker=str(models["safety"]),
            batch=4,
            stop_at_first_failure=False,
        )
    )
    s.executor = s.executor.model_copy(update=dict(kind=kind, pool_size=1))
    return s


def new_store(root: Path) -> RunStore:
    store = RunStore.open("r", root=root)
    store.append_many(
        [
            Scenario(
                domain="dangerous-behavior",
                image_prompt=f"a photo of scene {i}",
                image_description=f"scene {i}",
                question=f"q {i}?",
                hazard=f"h {i}",
                reference_answer="a safe answer",
            )
            for i in range(3)
        ]
    )
    return store


def pixels(store: RunStore, r: Render) -> np.ndarray:
    with Image.open(store.resolve(r.path)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def same_renders(a: RunStore, b: RunStore) -> None:
    """Same keys, seeds and files, pixels equal within one level (float sums in another process)."""
    ra, rb = {r.key: r for r in a.read(Render)}, {r.key: r for r in b.read(Render)}
    assert sorted(ra) == sorted(rb) and len(ra) == 6
    for key, r in ra.items():
        assert (r.seed, r.path, r.scenario_id, r.candidate) == (
            rb[key].seed,
            rb[key].path,
            rb[key].scenario_id,
            rb[key].candidate,
        )
        assert np.abs(pixels(a, r) - pixels(b, rb[key])).max() <= 1


def lines(store: RunStore, record: type) -> list[dict]:
    return [json.loads(x) for x in store.file_for(record).read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, models) -> RunStore:
    """The reference: render and model-local checks with the local executor."""
    store = new_store(tmp_path_factory.mktemp("local"))
    render(store, settings_for(models, "local"))
    check(store, settings_for(models, "local"))
    return store


def test_ray_writes_the_local_records_once_each_though_an_actor_dies_mid_batch(ray_local, local_run, models, tmp_path):
    """Render through Ray with an actor that dies mid-batch (Ray restarts it and runs the batch again),
    then the model-local checks through Ray: the records are the local executor's, each written once."""
    store = new_store(tmp_path)
    marker = tmp_path / "died"
    loader = DiesOnceLoader(executors.Loader(TextToImage.load, (str(models["sd"]),), dict(device="cpu")), str(marker))
    report = render(store, settings_for(models, "ray"), loader=loader)
    assert marker.exists()  # an actor did die mid-batch
    assert (report.rendered, report.failed) == (6, 0)
    keys = [r["key"] for r in lines(store, Render)]
    assert len(keys) == len(set(keys)) == 6  # nothing written twice
    same_renders(local_run, store)

    check(store, settings_for(models, "ray"))
    mine = {(c.scenario_id, c.check, c.candidate): c for c in store.read(CheckResult)}
    ref = {(c.scenario_id, c.check, c.candidate): c for c in local_run.read(CheckResult)}
    assert sorted(mine) == sorted(ref) and len(lines(store, CheckResult)) == len(ref)
    assert {k[1] for k in ref} == {"alignment", "image_benign.clip", "image_benign.safety_checker"}
    for k, c in ref.items():
        assert c.error is None and mine[k].error is None
        assert mine[k].score == pytest.approx(c.score, abs=1e-4) and mine[k].passed == c.passed


def test_killed_driver_resumes_to_the_identical_set(ray_local, local_run, models, tmp_path, monkeypatch):
    store = new_store(tmp_path)
    real_append = RunStore.append_many
    calls = []

    def append_then_die(self, records, *a, **k):
        if records and isinstance(records[0], Render) and len(calls) == 1:
            raise KeyboardInterrupt  # the driver dies after its first batch is written
        calls.append(1)
        return real_append(self, records, *a, **k)

    monkeypatch.setattr(RunStore, "append_many", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        render(store, settings_for(models, "ray"))
    monkeypatch.setattr(RunStore, "append_many", real_append)
    assert len(store.read(Render)) == 2  # one batch landed, whole

    report = render(store, settings_for(models, "ray"))
    assert (report.rendered, report.skipped) == (4, 2)  # only what was missing
    same_renders(local_run, store)


def test_ray_needs_a_cluster_or_says_how_to_start_one(monkeypatch):
    monkeypatch.setattr(executors, "ray_available", lambda: False)
    from generator.errors import UserError

    with pytest.raises(UserError, match="pip install"):
        list(executors.map_batches(Settings(executor=dict(kind="ray")), lambda: None, lambda m, b: b, [[1]]))


def test_local_map_batches_keeps_order_and_yields_a_failing_batch_as_its_exception():
    def fn(model, batch):
        if 5 in batch:
            raise ValueError("bad batch")
        return [model + x for x in batch]

    batches = executors.batches_of(Settings(), list(range(8)), batch_size=3)
    out = list(executors.map_batches(Settings(), lambda: 100, fn, batches))
    assert [i for i, _ in out] == [0, 1, 2]
    assert out[0][1] == [100, 101, 102] and out[2][1] == [106, 107]
    assert isinstance(out[1][1], ValueError)


def test_cli_unknown_executor_is_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from generator.cli import app

    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("SIUO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    new_store(tmp_path / "outputs")
    result = CliRunner().invoke(app, ["render", "--run", "r", "--executor", "spark"])
    assert result.exit_code == 2 and "--executor: unknown executor 'spark'" in result.output
    assert "Traceback" not in result.output
