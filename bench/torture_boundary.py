"""Torture probes of text at the boundary (issue 20, items 2, 10, 11, 13), run through the real CLI.

`probes(t)` takes bench/torture.py's `Torture` (its loopback server, config writer and `siuo` runner) and
appends one row per probe: a lone surrogate in a model reply, hostile `import-responses` files, escape
sequences in an endpoint's error and in a target name, and the exit code of an answer that skipped a case.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from generator.testing.fake_openai import Fault, tiny_png

PART = "boundary"
ESC = "\x1b"


def _official(t, name: str, images: list[str], tag: str) -> tuple[Path, Path]:
    """A SIUO-format file of one case per image name (no file for names starting with `missing`). The
    question carries `tag`, so no probe's request is served from another's cache entry (each pushed
    reply is then consumed by the request it was pushed for)."""
    root = t.work / "boundary" / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i, image in enumerate(images, start=1):
        if not image.startswith("missing"):
            Image.new("RGB", (16, 16), (90, 120, 150)).save(root / "images" / image)
        items.append(
            {
                "question_id": i,
                "image": image,
                "question": f"What should I do here ({tag}, {i})?",
                "category": "self-harm",
                "safety_warning": "w",
                "reference_answer": "r",
            }
        )
    gen = root / "siuo_gen.json"
    gen.write_text(json.dumps(items))
    return gen, root / "images"


def _run(t, run: str, images: list[str], tag: str | None = None) -> None:
    gen, images_dir = _official(t, run, images, tag or run)
    done = t.siuo("import-siuo", "--gen", str(gen), "--images", str(images_dir), "--run", run)
    assert done.returncode == 0, done.stderr


def _responses(t, run: str) -> list[dict]:
    path = t.work / "outputs" / run / "responses.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def probes(t) -> None:
    config = str(t.config("boundary.toml", max_retries=0))

    # 2. a lone surrogate in a reply: recorded (as U+FFFD), and a second run is served from the cache
    _run(t, "bnd-surrogate", ["a.png"], tag="surrogate")
    t.fake.push("I would not\ud800 do that")
    first = t.siuo("answer", "--run", "bnd-surrogate", "--samples", "1", "--config", config)
    _run(t, "bnd-surrogate-2", ["a.png"], tag="surrogate")
    hits = t.fake.hits
    second = t.siuo("answer", "--run", "bnd-surrogate-2", "--samples", "1", "--config", config)
    texts = [r.get("text") for r in _responses(t, "bnd-surrogate") + _responses(t, "bnd-surrogate-2")]
    held = (
        first.returncode == 0
        and second.returncode == 0
        and t.fake.hits == hits
        and texts == ["I would not\ufffd do that"] * 2
    )
    t.record(
        PART,
        'a reply "\\ud800" (lone surrogate), then the same case in a new run',
        f"exit {first.returncode}/{second.returncode}, texts {texts!r}, {t.fake.hits - hits} request(s) on the re-run",
        held,
    )

    # 10. hostile lmms-eval files: one line naming the file and line, exit 2
    deep = 100_000
    shapes = {
        "100k-deep nesting": ('{"target": "1", "resps": ' + "[" * deep + "]" * deep + "}\n").encode(),
        "doc as a list": b'{"doc": [1], "target": "1", "resps": ["x"]}\n',
        "non-UTF-8": b'{"target": "1", "resps": ["\xff"]}\n',
        "a PNG": tiny_png(),
        "resps as a dict": b'{"target": "1", "resps": {"a": 1}}\n',
        "resps as an int": b'{"target": "1", "resps": 3}\n',
    }
    outcomes = []
    for shape, content in shapes.items():
        path = t.work / "boundary" / f"samples_{len(outcomes)}.jsonl"
        path.write_bytes(content)
        done = t.siuo("import-responses", str(path), "--format", "lmms-eval", "--run", "bnd-surrogate", "--target", "x")
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        outcomes.append(
            (
                shape,
                done.returncode == 2
                and len(lines) == 1
                and "Traceback" not in done.stderr
                and f"{path.name}:1:" in lines[0],
            )
        )
    t.record(
        PART,
        "import-responses of hostile lmms-eval files (" + ", ".join(s for s, _ in outcomes) + ")",
        ", ".join(f"{s}: {'one-line error' if ok else 'NOT HELD'}" for s, ok in outcomes),
        all(ok for _, ok in outcomes),
    )

    # 10. bounds: 2,001 samples for one case, one answer of 100k characters
    path = t.work / "boundary" / "samples_flood.jsonl"
    path.write_text(json.dumps({"target": "1", "resps": [["y" * 100_000]] + [[f"a{k}"] for k in range(2000)]}) + "\n")
    done = t.siuo("import-responses", str(path), "--format", "lmms-eval", "--run", "bnd-surrogate", "--target", "flood")
    flood = [r for r in _responses(t, "bnd-surrogate") if r["target"] == "flood"]
    held = (
        done.returncode == 3
        and len(flood) == 16
        and max(len(r["text"]) for r in flood) == 32_000
        and "1985 answer(s) left out" in done.stdout + done.stderr
    )
    t.record(
        PART,
        "import-responses of 2,001 samples for one case, one of 100k characters",
        f"exit {done.returncode}, {len(flood)} imported, longest {max((len(r['text']) for r in flood), default=0)}",
        held,
    )

    # 11. an endpoint's error carrying ESC c (terminal reset) and ESC [2J (clear screen), in the log line
    _run(t, "bnd-escape", ["a.png"])
    t.fake.push(Fault.status(400, message="bad\x1bc\x1b[2J request"))
    done = t.siuo("answer", "--run", "bnd-escape", "--samples", "1", "--config", config)
    shown = "\\x1bc" in done.stderr and "request failed" in done.stderr
    raw = ESC in done.stderr
    t.record(
        PART,
        "an endpoint error body with ESC c / ESC [2J, logged by answer",
        f"exit {done.returncode}, raw ESC on stderr: {raw}, shown escaped: {shown}",
        not raw and shown and done.returncode == 3,
    )

    # 11. a target name that is rich markup with an ESC, in the score table
    answers = t.work / "boundary" / "samples_markup.jsonl"
    answers.write_text(json.dumps({"target": "1", "resps": ["fine"]}) + "\n")
    name = "[bold red]evil\x1bc"
    done = t.siuo("import-responses", str(answers), "--format", "lmms-eval", "--run", "bnd-escape", "--target", name)
    scored = t.siuo("score", "--run", "bnd-escape")
    literal, raw = "[bold red]evil\\x1bc" in scored.stdout, ESC in scored.stdout
    t.record(
        PART,
        "import-responses --target '[bold red]evil<ESC>c', then score",
        f"exit {done.returncode}/{scored.returncode}, name shown literally: {literal}, raw ESC: {raw}",
        done.returncode == 0 and scored.returncode == 0 and literal and not raw,
    )

    # 13. answer with a case whose image is missing: exit 3 with the reason
    _run(t, "bnd-skip", ["a.png", "missing.png"])
    t.fake.push("fine")
    done = t.siuo("answer", "--run", "bnd-skip", "--samples", "1", "--config", config)
    t.record(
        PART,
        "answer on a run with a case whose image is missing",
        f"exit {done.returncode}" + (", reason named" if "skipped: image missing" in done.stderr else ""),
        done.returncode == 3 and "skipped: image missing" in done.stderr,
    )
