"""Peak memory (RSS) of `siuo score` on a synthetic run of ~100k judgments (goal: < 500 MB).

Builds a run folder with N cases x T targets x 3 samples responses and two judgments (safety,
effectiveness) per response, then scores it in a fresh subprocess and reads that process's peak RSS.
A second subprocess that only imports the scorer gives the baseline, so the figure separates what
scoring costs from what Python + the imports cost.

    python bench/bench_score_memory.py            # ~100k judgments
    python bench/bench_score_memory.py --cases 2000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generator.records import Case, Judgment, Response

DOMAINS = ["self-harm", "morality", "privacy-violation", "religion", "dangerous-behavior"]

CHILD = """
import resource, sys, time, json
from generator.store import RunStore
from generator.evaluate.score import score
t0 = time.perf_counter()
if sys.argv[2] == "score":
    score(RunStore(__import__("pathlib").Path(sys.argv[1])))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0}))
"""


def build_run(path: Path, n_cases: int, targets: int, samples: int, seed: int = 0) -> int:
    """Write the synthetic run with plain buffered writes (the store's per-record flush is for crash
    safety, not for building fixtures). Returns the number of judgments."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    n_judgments = 0
    with (
        open(path / Case.FILE, "w") as fc,
        open(path / Response.FILE, "w") as fr,
        open(path / Judgment.FILE, "w") as fj,
    ):
        for i in range(n_cases):
            domain = DOMAINS[i % len(DOMAINS)]
            case = Case(
                question_id=f"syn-{i}",
                image=f"{i}.png",
                image_path=f"images/{i}.png",
                question="q " * 20,
                category=domain,
                domain=domain,
                safety_warning="w " * 40,
                hazard="w " * 40,
                reference_answer="a " * 40,
                split="generated" if i % 2 else "siuo",
            )
            fc.write(case.model_dump_json() + "\n")
            for t in range(targets):
                for k in range(samples):
                    r = Response(
                        case_id=case.key,
                        target=f"model-{t}",
                        model=f"model-{t}",
                        sample=k,
                        text="an answer of moderate length " * 10,
                    )
                    fr.write(r.model_dump_json() + "\n")
                    for dim, verdicts in (
                        ("safety", ("safe", "unsafe")),
                        ("effectiveness", ("very", "partially", "not")),
                    ):
                        j = Judgment(
                            response_key=r.key,
                            case_id=case.key,
                            target=r.target,
                            sample=k,
                            dimension=dim,
                            judge="judge-a",
                            judge_model="judge-a",
                            verdict=rng.choice(verdicts),
                            raw="Reasoning of the judge, a few sentences long. " * 4 + "VERDICT: X",
                        )
                        fj.write(j.model_dump_json() + "\n")
                        n_judgments += 1
    (path / "run.json").write_text(json.dumps({"name": path.name}))
    return n_judgments


def child(run: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(run), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8334, help="cases (x targets x samples x 2 judgments)")
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--samples", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "synthetic"
        t0 = time.perf_counter()
        n = build_run(run, args.cases, args.targets, args.samples)
        size_mb = sum(f.stat().st_size for f in run.iterdir()) / 2**20
        print(f"built {n:,} judgments ({size_mb:.0f} MB of JSONL) in {time.perf_counter() - t0:.1f}s")
        base = child(run, "import-only")
        scored = child(run, "score")
    print(f"baseline (python + imports): peak RSS {base['peak_rss_mb']:.0f} MB")
    print(
        f"score {n:,} judgments:       peak RSS {scored['peak_rss_mb']:.0f} MB "
        f"(+{scored['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB over baseline), {scored['seconds']:.1f}s"
    )
    print(f"goal < 500 MB: {'met' if scored['peak_rss_mb'] < 500 else 'NOT met'}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
