"""Render throughput: the local executor vs Ray Data actor pools, same model, same run, same seeds (not a test).

Each side runs the real `render` stage (`generator.render.stage.render`) on a fresh run of N scenarios and is
timed wall-clock from the call to the last record written, model loading included (the local side loads
once in this process; each Ray actor loads its own copy, which is what scaling out costs). The Ray
instance is started once before the timings (its start-up is printed, not counted). Every side's images
are compared with the local side's (largest pixel difference printed).

    python bench/bench_ray.py                                   # CPU, "bench" preset (64x64), pools 1 and 2
    # a real GPU cluster (after `ray start --head` on each node; one actor per GPU):
    python bench/bench_ray.py --real-size --device cuda --address auto --num-gpus 1 --pools 1,2,4,8 --images 512 --batch 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-size", action="store_true", help="SD-turbo-sized pipeline at 512x512 (use a GPU)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--images", type=int, default=48, help="images per side")
    ap.add_argument("--batch", type=int, default=4, help="render.batch (prompts per pipeline call)")
    ap.add_argument("--pools", default="1,2", help="Ray actor pool sizes to time")
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (0: CPU actors)")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPU cores per actor")
    ap.add_argument("--address", default="local", help="`local` (start one here) or `auto` / ray://host:port")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of the local side (default: torch's)")
    args = ap.parse_args(argv)

    import numpy as np
    import ray
    import torch
    from PIL import Image

    from generator import executors
    from generator.config import Settings
    from generator.records import Render, Scenario
    from generator.render.stage import render
    from generator.store import RunStore
    from generator.testing.tiny_models import IMAGE_SIZE, save_sd_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "real" if args.real_size else "bench"
    size = IMAGE_SIZE[preset]
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    model = save_sd_pipeline(work / f"sd-{preset}", preset)

    def settings(kind: str, pool: int = 1) -> Settings:
        s = Settings()
        s.render = s.render.model_copy(
            update=dict(
                backend="diffusers",
                model=str(model),
                candidates=1,
                steps=1,
                batch=args.batch,
                width=size,
                height=size,
                device=args.device,
            )
        )
        s.executor = s.executor.model_copy(
            update=dict(kind=kind, address=args.address, pool_size=pool, num_gpus=args.num_gpus, num_cpus=args.num_cpus)
        )
        return s

    def fresh_run(name: str) -> RunStore:
        store = RunStore.open(name, root=work / "runs")
        store.append_many(
            [
                Scenario(
                    domain="dangerous-behavior",
                    image_prompt=f"a photo of a rooftop at dusk, scene {i}",
                    image_description=f"scene {i}",
                    question=f"q {i}?",
                    hazard=f"h {i}",
                    reference_answer="a safe answer",
                )
                for i in range(args.images)
            ]
        )
        return store

    def timed(name: str, s: Settings) -> tuple[float, float, RunStore]:
        """Wall seconds of the whole stage (model loads included), and the pipeline's own seconds per
        image as the records give them (`Render.seconds`: measured where the batch ran)."""
        store = fresh_run(name)
        t0 = time.perf_counter()
        report = render(store, s)
        wall = time.perf_counter() - t0
        assert report.rendered == args.images and report.failed == 0, report.summary()
        compute = sum(r.seconds or 0.0 for r in store.read(Render)) / args.images
        return wall, compute, store

    def pixels(store: RunStore) -> dict[str, np.ndarray]:
        out = {}
        for r in store.read(Render):
            with Image.open(store.resolve(r.path)) as im:
                out[r.key] = np.asarray(im.convert("RGB")).astype(int)
        return out

    print(
        f"model: {preset} preset, {size}x{size}, 1 step, device {args.device}, {args.images} images, "
        f"render.batch {args.batch}; local torch threads {torch.get_num_threads()}, "
        f"Ray actors {args.num_cpus:g} CPU / {args.num_gpus:g} GPU each; {os.cpu_count()} cores on this machine"
    )
    local_wall, local_compute, local_store = timed("local", settings("local"))
    reference = pixels(local_store)

    t0 = time.perf_counter()
    executors.connect(settings("ray").executor)
    print(f"Ray started/joined in {time.perf_counter() - t0:.1f}s (not counted): {ray.cluster_resources()}")

    rows = [("local executor", local_wall, local_compute, 0)]
    for pool in [int(p) for p in args.pools.split(",") if p]:
        wall, compute, store = timed(f"ray{pool}", settings("ray", pool))
        got = pixels(store)
        assert sorted(got) == sorted(reference)
        diff = max(int(np.abs(got[k] - reference[k]).max()) for k in reference)
        rows.append((f"ray, {pool} actor(s)", wall, compute, diff))
    ray.shutdown()

    base = args.images / local_wall
    print(
        "\n| executor | wall s (model loads included) | images/s | ratio vs local | pipeline s/image where it ran "
        "| largest pixel diff vs local |"
    )
    print("|---|---|---|---|---|---|")
    for name, wall, compute, diff in rows:
        rate = args.images / wall
        print(f"| {name} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x | {compute:.3f} | {diff}/255 |")


if __name__ == "__main__":
    main()
