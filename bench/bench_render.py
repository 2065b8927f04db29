"""Rendering throughput: prompts batched vs one prompt at a time, same model, same device (not a test).

Both sides call `TextToImage.generate` (the render stage's path) on the same prompts and seeds; the
images are the same either way (one seeded generator per image), which the script checks too.
Printed, measured in one run: images/s one at a time, images/s batched, ratio (goal >= 2.5x).

    python bench/bench_render.py                      # CPU, random-weight 64x64 pipeline ("bench" preset)
    python bench/bench_render.py --real-size --device cuda   # SD-turbo architecture, 512x512, random weights
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-size", action="store_true", help="SD-turbo-sized UNet/VAE/text encoder (use a GPU)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on cpu, fp16 on cuda) | float16 | bfloat16 | float32")
    ap.add_argument("--images", type=int, default=32, help="images per side of the comparison")
    ap.add_argument("--batch", type=int, default=16, help="prompts per pipeline call on the batched side")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per side; the fastest counts (less noise)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from generator.models.diffusion import TextToImage, resolve_device, resolve_dtype
    from generator.testing.tiny_models import IMAGE_SIZE, make_sd_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "real" if args.real_size else "bench"
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, "StableDiffusionPipeline")
    size = IMAGE_SIZE[preset]
    t0 = time.perf_counter()
    pipe = make_sd_pipeline(preset).to(device)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    t2i = TextToImage(pipe=pipe, model=f"random-{preset}", device=device, dtype=dtype)
    params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    print(
        f"model: {preset} preset ({params / 1e6:.1f} M parameters), {size}x{size}, {args.steps} step(s), "
        f"device {device}, {dtype}, torch threads {torch.get_num_threads()}; built in {time.perf_counter() - t0:.1f}s"
    )

    prompts = [f"a photo of a rooftop at dusk, scene {i}, city lights below" for i in range(args.images)]
    seeds = list(range(1000, 1000 + args.images))
    kw = dict(steps=args.steps, guidance_scale=0.0, width=size, height=size)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t2i.generate(prompts[:2], seeds[:2], **kw)  # warm-up (kernels, allocator)
    t2i.generate(prompts[:1], seeds[:1], **kw)
    sync()

    def one_by_one() -> list:
        return [t2i.generate([p], [s], **kw)[0] for p, s in zip(prompts, seeds)]

    def in_batches() -> list:
        out = []
        for start in range(0, len(prompts), args.batch):
            out += t2i.generate(prompts[start : start + args.batch], seeds[start : start + args.batch], **kw)
        return out

    times: dict[str, float] = {}
    images: dict[str, list] = {}
    for _ in range(args.repeat):  # interleaved rounds: machine noise hits both sides alike
        for name, fn in (("single", one_by_one), ("batched", in_batches)):
            t0 = time.perf_counter()
            images[name] = fn()
            sync()
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
    single, batched = images["single"], images["batched"]
    one_at_a_time, batch_time = times["single"], times["batched"]

    diff = max(
        int(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max()) for a, b in zip(single, batched)
    )
    r1, rb = len(prompts) / one_at_a_time, len(prompts) / batch_time
    print(f"(fastest of {args.repeat} interleaved rounds per side)")
    print(f"one at a time : {r1:8.2f} images/s  ({one_at_a_time:.2f}s for {len(prompts)})")
    print(f"batched ({args.batch:>3}) : {rb:8.2f} images/s  ({batch_time:.2f}s for {len(prompts)})")
    print(f"ratio         : {rb / r1:8.2f}x  (goal >= 2.5x); largest pixel difference batched vs single: {diff}/255")


if __name__ == "__main__":
    main()
