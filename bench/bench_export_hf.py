"""export-hf throughput against a baseline taken in the same run: copying the same image files.

    python bench/bench_export_hf.py [--cases 300] [--side 512]

Prints cases/s and MB/s of `export_hf` (parquet shards + card), the plain-copy baseline, their ratio, the
`datasets.load_dataset` + full iteration time, and the process's peak RSS (the largest shard is held in
memory while it is written: MAX_SHARD_BYTES of images, 256 MB).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--side", type=int, default=512)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-export-hf-"))
    os.environ["SIUO_OUTPUTS"] = str(root / "outputs")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf-cache")
    import numpy as np
    from PIL import Image

    from generator.interop.hf import export_hf
    from generator.records import Case
    from generator.store import RunStore

    try:
        store = RunStore.open("bench")
        rng = np.random.default_rng(0)
        cases = []
        for i in range(args.cases):  # noise PNGs: incompressible, the worst case for shard size
            Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8)).save(
                store.images_dir / f"{i}.png"
            )
            cases.append(
                Case(
                    question_id=f"gen-{i}",
                    image=f"{i}.png",
                    image_path=f"images/{i}.png",
                    question="q",
                    category="c",
                    domain="d",
                    safety_warning="w",
                    hazard="h",
                    reference_answer="a",
                    split="generated",
                    options={"A": "x", "B": "y"},
                    correct_option="A",
                )
            )
        store.write_all(Case, cases)
        mb = sum(p.stat().st_size for p in store.images_dir.iterdir()) / 1e6
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        t = time.perf_counter()
        shutil.copytree(store.images_dir, root / "copy")
        copy_s = time.perf_counter() - t
        t = time.perf_counter()
        result = export_hf(store, root / "ds", ("generated",))
        export_s = time.perf_counter() - t
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        import datasets

        t = time.perf_counter()
        ds = datasets.load_dataset(str(root / "ds"))["generated"]
        n = sum(1 for _ in ds)
        load_s = time.perf_counter() - t
        assert n == args.cases
        print(
            f"| {args.cases} cases, {args.side}² noise PNGs, {mb:.0f} MB | copy {copy_s:.2f} s | export {export_s:.2f} s "
            f"({args.cases / export_s:.0f} cases/s, {mb / export_s:.0f} MB/s, {len(result.shards)} shard(s)) | "
            f"export ÷ copy {export_s / copy_s:.1f}× | load + iterate {load_s:.2f} s | peak RSS {rss0:.0f} → {rss1:.0f} MB |"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
