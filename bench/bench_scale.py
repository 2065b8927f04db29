"""Benchmark: answer + judge at scale (1k / 10k cases) with real-size and 1x1 images: wall, requests/s
against the ideal C/L, and peak RSS of the process running the stages.

Cases are the 167 official ones repeated with fresh question ids; images are generated, one distinct
file per 10 cases: 1024x1024 PNGs of real photos (scikit-image's sample photos, each file a different
crop, mirror and brightness), or of noise with --noise (incompressible: the worst case), or 1x1 PNGs. Each configuration runs in
its own subprocess so `ru_maxrss` is its own peak. The server is the loopback one, in its own process.

    python bench/bench_scale.py                       # 1k cases, real-size and 1x1, 20 ms and 200 ms
    python bench/bench_scale.py --cases 1000,10000 --samples 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_runner import SIUO_DIR, make_settings, start_server  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
"""Real colour photographs of the offline photo pool (generator/render/photo_pool.py): the realistic kind of case image."""


def make_inputs(root: Path, cases: int, size: int, noise: bool = False) -> tuple[Path, Path]:
    """A SIUO-format question file with `cases` items and its images (one file per 10 cases): real photos
    resized to `size`² (each file a different crop, mirror and brightness, so every file differs), or
    incompressible noise with `noise` (the worst case for any compact format)."""
    import numpy as np
    from PIL import Image, ImageEnhance

    source = SIUO_DIR / "siuo_gen.json"
    if not source.is_file():  # a fresh clone has no ../shared: the project's own SIUO-format cases serve as templates
        source = ROOT / "tests" / "data" / "siuo_mini_gen.json"
    official = json.loads(source.read_text(encoding="utf-8"))
    images = root / f"images-{size}-{'noise' if noise else 'photo'}"
    images.mkdir(exist_ok=True)
    distinct = max(1, cases // 10)
    rng = np.random.default_rng(0)
    photos = []
    if size > 1 and not noise:
        from generator.render.photo_pool import POOL

        photos = [Image.open(p.path()).convert("RGB") for p in POOL if p.name in PHOTOS]
    for i in range(distinct):
        path = images / f"img-{i:05d}.png"
        if path.exists():
            continue
        if noise or size == 1:
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        else:
            base = photos[i % len(photos)]
            w, h = base.size
            cut = (i // len(photos)) % 8
            img = base.crop((cut * w // 40, cut * h // 40, w - cut * w // 60, h - cut * h // 60))
            img = img.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else img
            img = ImageEnhance.Brightness(img.resize((size, size), Image.BICUBIC)).enhance(0.8 + 0.05 * (i % 9))
        img.save(path, compress_level=1)
    items = [
        {**official[i % len(official)], "question_id": 100000 + i, "image": f"img-{i % distinct:05d}.png"}
        for i in range(cases)
    ]
    gen = root / f"gen-{cases}.json"
    gen.write_text(json.dumps(items), encoding="utf-8")
    return gen, images


def child(args: argparse.Namespace) -> None:
    """One configuration: import, answer, judge; prints a JSON line with its figures."""
    import asyncio

    from generator.evaluate.answer import answer_async
    from generator.evaluate.judge import judge_async
    from generator.interop.siuo import import_siuo
    from generator.store import RunStore

    settings = make_settings(args.base_url, None)
    settings.bench.samples = args.samples
    store = RunStore.open(f"run-{os.getpid()}", root=Path(args.root))
    import_siuo(store, Path(args.gen), images_dir=Path(args.images))
    t0 = time.perf_counter()
    [ans] = asyncio.run(answer_async(store, settings, "targets", show_progress=False))
    t1 = time.perf_counter()
    jud = asyncio.run(judge_async(store, settings, ["judge"], show_progress=False))
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "answer_s": t1 - t0,
                "judge_s": t2 - t1,
                "requests": ans.cases + jud.requested,
                # every reply that did not become a scored record: the bench must not time failures
                "errors": ans.errors + sum(jud.verdicts.get(k, 0) for k in ("error", "unparsable", "suspect")),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("base-url", "root", "gen", "images"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--cases", default="1000", help="comma-separated case counts (default 1000)")
    ap.add_argument("--latencies", default="0.02,0.2", help="server latencies, seconds")
    ap.add_argument("--samples", type=int, default=1, help="responses per case (default 1)")
    ap.add_argument("--noise", action="store_true", help="noise images instead of photos (incompressible)")
    ap.add_argument("--sizes", default="1024,1", help="image sides to run (default 1024,1: real-size and 1x1)")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from generator.config import Endpoint

    concurrency = Endpoint.model_fields["max_concurrency"].default
    print(
        "| cases | images | latency | answer s | judge s | ms/case | requests | req/s | ÷ C/L | peak RSS MB | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for latency in (float(x) for x in args.latencies.split(",")):
            proc, base_url = start_server(latency)
            try:
                for cases in (int(x) for x in args.cases.split(",")):
                    for size in (int(x) for x in args.sizes.split(",")):
                        gen, images = make_inputs(root, cases, size, args.noise)
                        out = subprocess.run(
                            [
                                sys.executable,
                                __file__,
                                "--child",
                                "--base-url",
                                base_url,
                                "--root",
                                str(root),
                                "--gen",
                                str(gen),
                                "--images",
                                str(images),
                                "--samples",
                                str(args.samples),
                            ],
                            capture_output=True,
                            text=True,
                            cwd=ROOT,
                            check=True,
                        )
                        r = json.loads(out.stdout.strip().splitlines()[-1])
                        wall = r["answer_s"] + r["judge_s"]
                        rate = r["requests"] / wall
                        label = ("1024² noise PNG" if args.noise else "1024² photo PNG") if size > 1 else "1×1"
                        print(
                            f"| {cases:,} | {label} | {latency * 1000:.0f} ms | {r['answer_s']:.1f} | {r['judge_s']:.1f} "
                            f"| {wall * 1000 / cases:.1f} | {r['requests']:,} | {rate:.0f} | {rate / (concurrency / latency):.2f} "
                            f"| {r['peak_rss_mb']:.0f} | {r['errors']} |",
                            flush=True,
                        )
            finally:
                proc.kill()


if __name__ == "__main__":
    main()
