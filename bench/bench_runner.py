"""Benchmark: answer + judge on the 167 official SIUO cases x 3 samples, concurrent vs sequential.

The model server is the loopback OpenAI-compatible server in its own process, with 200 ms latency per
request (a remote API's round trip), so what is measured is how well the stages overlap requests.

- concurrent: `answer` then `judge` over all cases, at the endpoint's default `max_concurrency`
  (and, with --sweep, at other bounds);
- sequential: the same stages with `max_concurrency = 1` (the same requests, one at a time), timed on
  a subset of cases and extrapolated per request to the full run (a full sequential run takes minutes).

    python bench/bench_runner.py                # default concurrency vs sequential
    python bench/bench_runner.py --sweep 16,32,64

Needs the official question files at ../shared/siuo (placeholder images are made here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIUO_DIR = ROOT.parent / "shared" / "siuo"


def serve(port: int, latency: float) -> None:
    """The server process: the loopback server, scripted so judges end with a valid verdict line."""
    from generator.testing.fake_openai import FakeOpenAI, last_user_text
    from generator.testing.honest_judge import follows_format

    def script(body: dict) -> str | list[str]:
        text = last_user_text(body)
        # A judge prompt ends by listing its verdict lines: answer with one of them, so every judgment
        # parses (an unparsable reply would be recorded as a failure, and the bench would time failures).
        if "VERDICT: UNSAFE" in text:
            return "The response ignores the hazard.\nVERDICT: UNSAFE"
        if "VERDICT: VERY" in text:
            return "It answers the question.\nVERDICT: VERY"
        if "VERDICT: ANSWERED" in text:
            return "It describes the image.\nVERDICT: ANSWERED"
        n = int(body.get("n") or 1)
        return [f"Sure, here is a helpful answer (sample {i})." for i in range(n)]

    fake = FakeOpenAI(port=port, latency=latency)
    fake.on_chat(follows_format(script))
    fake.serve_forever()


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the loopback server did not start (said {base_url!r})")
    return proc, base_url


def make_settings(base_url: str, concurrency: int | None):
    from generator.config import settings_from_dict

    endpoint = {"base_url": base_url, "timeout_s": 30.0}
    if concurrency is not None:
        endpoint["max_concurrency"] = concurrency
    return settings_from_dict(
        {
            "endpoints": {"target": {**endpoint, "model": "target-vlm"}, "judge": {**endpoint, "model": "judge-llm"}},
            "roles": {"targets": ["target"], "judge": ["judge"]},
            "cache": {"enabled": False},  # every request really goes to the server
        }
    )


def make_run(root: Path, name: str, images: Path, limit: int | None):
    from generator.interop.siuo import import_siuo
    from generator.records import Case
    from generator.store import RunStore

    store = RunStore.open(name, root=root)
    import_siuo(store, SIUO_DIR / "siuo_gen.json", images_dir=images)
    if limit is not None:
        store.write_all(Case, store.read(Case)[:limit])
    return store


def timed_run(store, settings) -> dict:
    """Answer then judge; wall seconds and requests of each."""
    from generator.evaluate.answer import answer_async
    from generator.evaluate.judge import judge_async

    t0 = time.perf_counter()
    [ans] = asyncio.run(answer_async(store, settings, "targets", show_progress=False))
    t1 = time.perf_counter()
    jud = asyncio.run(judge_async(store, settings, ["judge"], show_progress=False))
    t2 = time.perf_counter()
    answer_requests = ans.cases  # one request per case: its 3 samples travel as n=3
    return {
        "cases": ans.cases,
        "responses": ans.requested,
        "answer_requests": answer_requests,
        "judge_requests": jud.requested,
        "answer_s": t1 - t0,
        "judge_s": t2 - t1,
        "total_s": t2 - t0,
        "requests": answer_requests + jud.requested,
        "errors": ans.errors + jud.verdicts.get("error", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds (default 0.2)")
    ap.add_argument("--sequential-cases", type=int, default=10, help="cases in the timed sequential subset")
    ap.add_argument("--sweep", default="", help="extra max_concurrency values to time, e.g. 16,32,64")
    args = ap.parse_args()
    if args.serve:
        serve(args.port, args.latency)
        return
    if not (SIUO_DIR / "siuo_gen.json").exists():
        raise SystemExit(f"official SIUO files not found in {SIUO_DIR}")

    from PIL import Image

    from generator.config import Endpoint

    default_concurrency = Endpoint.model_fields["max_concurrency"].default
    proc, base_url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            images = root / "images"
            images.mkdir()
            for item in json.loads((SIUO_DIR / "siuo_gen.json").read_text(encoding="utf-8")):
                Image.new("RGB", (64, 64), (120, 80, 40)).save(images / item["image"])

            results = {}
            levels = [None] + [int(x) for x in args.sweep.split(",") if x.strip()]
            for level in levels:
                label = f"default ({default_concurrency})" if level is None else str(level)
                store = make_run(root, f"conc-{level or 'default'}", images, None)
                results[label] = timed_run(store, make_settings(base_url, level))
            seq_store = make_run(root, "sequential", images, args.sequential_cases)
            seq = timed_run(seq_store, make_settings(base_url, 1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    full = results[f"default ({default_concurrency})"]
    per_request = seq["total_s"] / seq["requests"]
    seq_full = per_request * full["requests"]
    print(
        f"loopback server latency {args.latency * 1000:.0f} ms/request; {full['cases']} cases x 3 samples = "
        f"{full['responses']} responses; {full['requests']} requests per run "
        f"({full['answer_requests']} answer (n=3 each) + {full['judge_requests']} judge); cache off; {os.cpu_count()} CPU cores"
    )
    print(
        f"sequential (max_concurrency=1), timed on {seq['cases']} cases / {seq['requests']} requests: "
        f"{seq['total_s']:.2f} s = {per_request * 1000:.0f} ms/request -> extrapolated to the full run: {seq_full:.1f} s"
    )
    for label, r in results.items():
        print(
            f"concurrent max_concurrency={label}: answer {r['answer_s']:.2f} s + judge {r['judge_s']:.2f} s = "
            f"{r['total_s']:.2f} s; speed-up vs sequential {seq_full / r['total_s']:.1f}x; errors {r['errors']}"
        )
    naive = full["responses"] * (1 + 2)  # one request per sample, then one per (response, dimension)
    print(
        f"(a naive loop asking one sample per request would send {naive} requests: ~{per_request * naive:.0f} s, "
        f"{per_request * naive / full['total_s']:.1f}x the default-concurrency run)"
    )
    goal = seq_full / full["total_s"]
    print(
        f"goal >= 20x at the default concurrency: {'met' if goal >= 20 else 'NOT met'} ({goal:.1f}x; "
        f"with at most {default_concurrency} requests in flight per endpoint the ceiling is {default_concurrency}x, "
        f"so >= 20x needs max_concurrency >= 20 in the endpoint config)"
    )


if __name__ == "__main__":
    main()
