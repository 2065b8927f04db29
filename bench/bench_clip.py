"""CLIP scoring throughput: a batch of images per forward pass vs one image per pass (not a test).

Both sides run the check stage's path (`ClipScorer.encode_images` on PNG files, then the cosine with the
image description), on the same files, so loading and preprocessing are counted on both sides. The CLIP is
saved as a state-dict file and loaded with `clip.load`, as a user's local checkpoint is.
Printed, measured in one run: images/s per image, images/s batched, ratio (goal >= 5x).

    python bench/bench_clip.py                       # CPU, random-weight 64x64 CLIP ("bench" preset)
    python bench/bench_clip.py --real-size --device cuda    # ViT-B/32 architecture, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-size", action="store_true", help="ViT-B/32 (224x224) instead of the small bench CLIP")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="images per forward pass on the batched side")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per side; the fastest counts (less noise)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from generator.models.clip_model import ClipScorer
    from generator.testing.tiny_models import CLIP_PRESETS, save_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "real" if args.real_size else "bench"
    res = CLIP_PRESETS[preset]["image_resolution"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scorer = ClipScorer.load(str(save_clip(folder / "clip.pt", preset)), device=args.device)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.images):  # images at the size the model takes: preprocessing is not the story here
            p = folder / f"img{i}.png"
            Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8)).save(p)
            paths.append(p)
        descriptions = [f"a photo of a rooftop, scene {i}" for i in range(args.images)]
        params = sum(p.numel() for p in scorer.model.parameters())
        print(
            f"model: {preset} preset ({params / 1e6:.1f} M parameters, {res}x{res}), device {scorer.device}, "
            f"torch threads {torch.get_num_threads()}, {args.images} images"
        )
        text = scorer.encode_texts(descriptions)  # the same on both sides; not timed

        def sync() -> None:
            if str(scorer.device).startswith("cuda"):
                torch.cuda.synchronize()

        def per_image():
            return torch.cat([scorer.encode_images([p], batch_size=1) for p in paths])

        def batched():
            return scorer.encode_images(paths, batch_size=args.batch)

        scorer.encode_images(paths[: args.batch], batch_size=args.batch)  # warm-up
        per_image()
        times: dict[str, float] = {}
        scores: dict[str, torch.Tensor] = {}
        for _ in range(args.repeat):
            for name, fn in (("per image", per_image), ("batched", batched)):
                t0 = time.perf_counter()
                emb = fn()
                sync()
                scores[name] = (emb * text).sum(-1)
                times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
    r1, rb = args.images / times["per image"], args.images / times["batched"]
    diff = float((scores["per image"] - scores["batched"]).abs().max())
    print(f"(fastest of {args.repeat} interleaved rounds per side)")
    print(f"per image     : {r1:8.1f} images/s")
    print(f"batched ({args.batch:>3}) : {rb:8.1f} images/s")
    print(f"ratio         : {rb / r1:8.2f}x  (goal >= 5x); largest score difference: {diff:.1e}")


if __name__ == "__main__":
    main()
