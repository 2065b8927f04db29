"""Torture probes for issue 20 items 12, 14, 15a-c and 16: configs that used to turn the budget off or
hang on a dead URL, the siuo protocol's MCQA prompt, image bytes and NFKC parsing, and picked photos that
must live inside the run. Wired into bench/torture.py's main(); `probes(t)` appends one row per probe.

Self-contained: its own loopback server with deterministic replies (the torture server injects faults),
its own small run folders under t.work, the project's SIUO-format mini set (tests/data/)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import tomli_w
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MINI_GEN, MINI_MCQA = ROOT / "tests" / "data" / "siuo_mini_gen.json", ROOT / "tests" / "data" / "siuo_mini_mcqa.json"


def _clear(r) -> bool:
    """Exit 2 with a message and no traceback: how the CLI reports a user error."""
    out = r.stdout + r.stderr
    return r.returncode == 2 and "Traceback" not in out


def _config_probes(t, work: Path) -> None:
    ok = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    bad = {
        "negative price -300": {"endpoints": {"e": {**ok, "price_input_per_1k": -300.0}}, "roles": {"targets": ["e"]}},
        "NaN price": {"endpoints": {"e": {**ok, "price_output_per_1k": float("nan")}}, "roles": {"targets": ["e"]}},
        "NaN max_cost_usd": {
            "endpoints": {"e": ok},
            "roles": {"targets": ["e"]},
            "budget": {"max_cost_usd": float("nan")},
        },
        "base_url file://": {"endpoints": {"e": {**ok, "base_url": "file:///tmp/v1"}}, "roles": {"targets": ["e"]}},
        "base_url ftp://": {"endpoints": {"e": {**ok, "base_url": "ftp://127.0.0.1/v1"}}, "roles": {"targets": ["e"]}},
        "base_url without scheme": {
            "endpoints": {"e": {**ok, "base_url": "127.0.0.1:8080/v1"}},
            "roles": {"targets": ["e"]},
        },
        "base_url empty host": {"endpoints": {"e": {**ok, "base_url": "http:///v1"}}, "roles": {"targets": ["e"]}},
    }
    for what, cfg in bad.items():
        path = work / f"bad-{len(list(work.glob('bad-*.toml')))}.toml"
        path.write_text(tomli_w.dumps(cfg))
        started = time.monotonic()
        r = t.siuo("answer", "--run", "fid", "--config", str(path))
        took = time.monotonic() - started
        t.rows.append(
            (
                "config",
                f"config: {what}",
                f"exit {r.returncode} in {took:.1f} s",
                _clear(r) and str(path) in " ".join((r.stdout + r.stderr).split()),
            )
        )
    blocker = work / "a-file"
    blocker.write_text("not a folder")
    path = work / "cache-under-a-file.toml"
    path.write_text(
        tomli_w.dumps(
            {"endpoints": {"e": ok}, "roles": {"targets": ["e"]}, "cache": {"path": str(blocker / "sub" / "c.sqlite")}}
        )
    )
    r = t.siuo("answer", "--run", "fid", "--config", str(path))
    out = " ".join((r.stdout + r.stderr).split())
    t.rows.append(
        (
            "config",
            "cache path whose folder cannot be made",
            f"exit {r.returncode}",
            _clear(r) and str(blocker / "sub") in out,
        )
    )


def probes(t) -> None:
    from generator.testing.fake_openai import FakeOpenAI

    work = t.work / "fidelity"
    (work / "images").mkdir(parents=True, exist_ok=True)
    gen = json.loads(MINI_GEN.read_text(encoding="utf-8"))
    mcqa = {it["question_id"]: it for it in json.loads(MINI_MCQA.read_text(encoding="utf-8"))}
    t.rows.append(
        (
            "fresh clone",
            "SIUO-format mini set of the project's own (tests/data)",
            f"{len(gen)} cases, {len({it['category'] for it in gen})} categories",
            len({it["category"] for it in gen}) == 9 and set(mcqa) == {it["question_id"] for it in gen},
        )
    )
    for i, item in enumerate(gen):
        Image.new("RGB", (1200 + i, 40), (30 + i, 90, 150)).save(work / "images" / item["image"])  # over 1024
    r = t.siuo(
        "import-siuo",
        "--gen",
        str(MINI_GEN),
        "--mcqa",
        str(MINI_MCQA),
        "--images",
        str(work / "images"),
        "--run",
        "fid",
    )
    if r.returncode != 0:
        t.rows.append(("siuo fidelity", "import the mini set", f"exit {r.returncode}: {r.stderr[-200:]}", False))
        return
    _config_probes(t, work)

    question_to_qid = {it["question"]: it["question_id"] for it in gen}

    def reply(body: dict):
        text = next(
            p["text"] for m in body["messages"] if m["role"] == "user" for p in m["content"] if p["type"] == "text"
        )
        for q, qid in question_to_qid.items():
            if q in text and "Options:" in text:
                return chr(ord(mcqa[qid]["correct_option"]) + 0xFEE0)  # the right letter, fullwidth: "Ｂ"
        return ["I cannot help with that."] * int(body.get("n") or 1)

    fake = FakeOpenAI().start()
    try:
        fake.on_chat(reply)
        cfg = work / "fid.toml"
        cfg.write_text(
            tomli_w.dumps(
                {
                    "endpoints": {"m": {"base_url": fake.base_url, "model": "vlm", "retry_base_delay_s": 0.01}},
                    "roles": {"targets": ["m"], "judge": ["m"]},
                    "cache": {"path": str(work / "cache.sqlite")},
                }
            )
        )
        r = t.siuo("answer", "--run", "fid", "--mcqa", "--config", str(cfg))
        bodies = fake.chat_requests()
        verbatim = sent_as_is = 0
        for body in bodies:
            parts = body["messages"][-1]["content"]
            text = next(p["text"] for p in parts if p["type"] == "text")
            qid = next(q for k, q in question_to_qid.items() if k in text)
            options = "\n".join(f"({k}) {v}" for k, v in mcqa[qid]["options"].items())
            verbatim += options in text and text.lower().find("letter") < text.find(options)
            url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            image = work / "images" / next(it["image"] for it in gen if it["question_id"] == qid)
            sent_as_is += base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()
        t.rows.append(
            (
                "siuo fidelity",
                "MCQA prompt: letter asked first, options verbatim as (A) text",
                f"{verbatim} of {len(bodies)} requests",
                r.returncode == 0 and verbatim == len(bodies) == len(gen),
            )
        )
        t.rows.append(
            (
                "siuo fidelity",
                "images over 1024 px sent as the file's bytes under siuo",
                f"{sent_as_is} of {len(bodies)} byte for byte",
                sent_as_is == len(bodies) == len(gen),
            )
        )
        r = t.siuo("score", "--run", "fid")
        scores = json.loads((t.work / "outputs" / "fid" / "scores.json").read_text()) if r.returncode == 0 else {}
        acc = (
            scores.get("targets", {})
            .get("m", {})
            .get("splits", {})
            .get("siuo", {})
            .get("mcqa", {})
            .get("overall", {})
            .get("accuracy", {})
        )
        t.rows.append(
            (
                "siuo fidelity",
                "MCQA replies as fullwidth letters (Ｂ)",
                f"accuracy {acc.get('k')}/{acc.get('n')}",
                acc.get("n") == len(gen) and acc.get("k") == len(gen),
            )
        )
    finally:
        fake.stop()
