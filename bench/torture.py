"""A torture run: hostile inputs, injected faults, kill -9 mid-stage, two writers on one run, canary keys.

Everything runs against the loopback OpenAI-compatible server (generator/testing/fake_openai.py) playing the
scripted pipeline model, with the real `siuo` CLI in subprocesses, on the 167 official SIUO cases (tiny
placeholder images; the suite's own 21 SIUO-format cases when ../shared is absent). At the end one table says what was tried and what held; the exit code is 1 when
anything did not hold.

    python bench/torture.py                  # about 2 minutes on 2 cores
    python bench/torture.py --kills 20 --fault-rate 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import tomli_w
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generator.testing.fake_openai import FakeOpenAI, Fault  # noqa: E402
from generator.testing.pipeline_script import respond  # noqa: E402

SIUO_DIR = ROOT.parent / "shared" / "siuo"
MINI_DIR = ROOT / "tests" / "data"
"""Without ../shared (a person's clone), the suite's own SIUO-format cases stand in for the official ones."""
CANARY = "sk-canary-7f3c9e1d5b2a4c6e8f0a1b3d5e7f9a2c"


class Torture:
    def __init__(self, work: Path, seed: int, fault_rate: float):
        self.work = work
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.rows: list[tuple[str, str, str, bool]] = []  # part, tried, result, held
        self.faults = Counter()
        self.fake = FakeOpenAI(latency=0.01).start()
        self.fake.on_chat(self._reply)
        self.env = {**os.environ, "SIUO_OUTPUTS": str(work / "outputs"), "TORTURE_KEY": CANARY, "HF_HUB_OFFLINE": "1"}

    # -- the hostile model -----------------------------------------------------------------------------

    def _reply(self, body: dict):
        if self.rng.random() < self.fault_rate:
            fault = self.rng.choice(
                [
                    Fault.status(429, retry_after=0.05),
                    Fault.status(500),
                    Fault.malformed(),
                    Fault.drop(),
                    Fault.hang(2.5),
                    Fault.status(500, headers={"x-echo-authorization": f"Bearer {CANARY}"}),
                ]
            )
            self.faults[fault.kind if fault.kind != "status" else f"HTTP {fault.code}"] += 1
            return fault
        return respond(body)

    def config(self, name: str = "siuo.toml", **endpoint) -> Path:
        common = {
            "base_url": self.fake.base_url,
            "api_key_env": "TORTURE_KEY",
            "timeout_s": 2.0,
            "retry_base_delay_s": 0.02,
            "max_retries": 6,
            "outage_patience_s": 5.0,
            "max_concurrency": 16,
            **endpoint,
        }
        cfg = {
            "endpoints": {"m": {**common, "model": "scripted-vlm", "supports_images": True}},
            "roles": {"targets": ["m"], "judge": ["m"]},
            "cache": {"path": str(self.work / f"cache-{name}.sqlite")},
        }
        path = self.work / name
        path.write_text(tomli_w.dumps(cfg))
        return path

    def siuo(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "generator.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "generator.cli", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def record(self, part: str, tried: str, result: str, held: bool) -> None:
        self.rows.append((part, tried, result, held))

    # -- parts -----------------------------------------------------------------------------------------

    def official_files(self) -> dict[str, Path]:
        root = self.work / "siuo"
        (root / "images").mkdir(parents=True, exist_ok=True)
        if (SIUO_DIR / "siuo_gen.json").is_file():
            files = {"gen": SIUO_DIR / "siuo_gen.json", "mcqa": SIUO_DIR / "siuo_mcqa.json"}
        else:
            files = {"gen": MINI_DIR / "siuo_mini_gen.json", "mcqa": MINI_DIR / "siuo_mini_mcqa.json"}
        for item in json.loads(files["gen"].read_text()):
            Image.new("RGB", (16, 16), (90, 120, 150)).save(root / "images" / item["image"])
        return {**files, "images": root / "images"}

    def bad_inputs(self, official: dict[str, Path]) -> None:
        gen = json.loads(official["gen"].read_text())
        bad = self.work / "bad"
        bad.mkdir()

        def item(**change):
            return [{**gen[0], **change}]

        cases = {
            "empty file": b"",
            "not JSON": b"{ nope",
            "JSON 200,000 deep": b"[" * 200_000 + b"]" * 200_000,
            "a list of numbers": b"[1, 2, 3]",
            "an item without question": json.dumps([{k: v for k, v in gen[0].items() if k != "question"}]).encode(),
            '1001 and "1001"': json.dumps([gen[0], {**gen[1], "question_id": str(gen[0]["question_id"])}]).encode(),
            "id a/../../../escaped": json.dumps(item(question_id="a/../../../escaped")).encode(),
            "id with a newline": json.dumps(item(question_id="a\nb")).encode(),
            "a 50 MB question": json.dumps(item(question="x" * 50_000_000)).encode(),
            "not UTF-8": b'[{"question": "caf\xe9"}]',
            "image ../../etc/passwd": json.dumps(item(image="../../etc/passwd")).encode(),
            "question_id null": json.dumps(item(question_id=None)).encode(),
        }
        for what, data in cases.items():
            path = bad / f"{len(os.listdir(bad))}.json"
            path.write_bytes(data)
            r = self.siuo("import-siuo", "--gen", str(path), "--images", str(official["images"]), "--run", "bad")
            clear = r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
            self.record("bad input", f"import: {what}", f"exit {r.returncode}", clear)
        r = self.siuo("import-siuo", "--gen", str(bad), "--run", "bad")
        self.record(
            "bad input",
            "import: --gen is a folder",
            f"exit {r.returncode}",
            r.returncode == 2 and "Traceback" not in r.stderr,
        )
        configs = {
            "config not UTF-8": b"[budget]\n# caf\xe9\n",
            "config not TOML": b"[endpoints\n",
            "key in base_url": tomli_w.dumps(
                {"endpoints": {"e": {"base_url": f"http://u:{CANARY}@127.0.0.1/v1", "model": "m"}}}
            ).encode(),
            "key in extra_body": tomli_w.dumps(
                {
                    "endpoints": {
                        "e": {"base_url": "http://127.0.0.1/v1", "model": "m", "extra_body": {"api_key": CANARY}}
                    }
                }
            ).encode(),
            "api_key in the file": tomli_w.dumps(
                {"endpoints": {"e": {"base_url": "http://127.0.0.1/v1", "model": "m", "api_key": CANARY}}}
            ).encode(),
            "negative concurrency": tomli_w.dumps(
                {"endpoints": {"e": {"base_url": "http://127.0.0.1/v1", "model": "m", "max_concurrency": -1}}}
            ).encode(),
        }
        for what, data in configs.items():
            path = bad / f"{len(os.listdir(bad))}.toml"
            path.write_bytes(data)
            r = self.siuo("answer", "--run", "bad", "--config", str(path))
            out = r.stderr + r.stdout
            clear = r.returncode == 2 and "Traceback" not in out and CANARY not in out
            self.record("bad input", f"config: {what}", f"exit {r.returncode}", clear)

    def faults_and_kills(self, official: dict[str, Path], kills: int) -> None:
        cfg = self.config()
        r = self.siuo(
            "import-siuo",
            "--gen",
            str(official["gen"]),
            "--mcqa",
            str(official["mcqa"]),
            "--images",
            str(official["images"]),
            "--run",
            "t",
        )
        assert r.returncode == 0, r.stderr
        run = self.work / "outputs" / "t"
        n_cases = sum(1 for _ in (run / "cases.jsonl").open())
        # kill -9 at random moments of `answer`, then let it finish
        killed = 0
        for _ in range(kills):
            p = self.spawn("answer", "--run", "t", "--config", str(cfg), "--wait")
            time.sleep(self.rng.uniform(0.8, 4.0))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                killed += 1
            p.wait()
        rounds = 0
        while True:  # finish, then retry recorded failures until none is left (bounded)
            rounds += 1
            r = self.siuo("answer", "--run", "t", "--config", str(cfg), *(["--retry-failed"] if rounds > 1 else []))
            if r.returncode == 0 or rounds == 6:
                break
        lines = (run / "responses.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        latest = {}
        for rec in records:
            latest[rec["key"]] = rec
        ok = sum(1 for rec in latest.values() if rec["text"] is not None)
        want = n_cases * 3
        self.record(
            "kill -9",
            f"{killed} kills during answer ({n_cases} cases x 3)",
            f"{len(latest)} keys, {ok} answered, {len(lines) - len(latest)} superseded lines (retries)",
            len(latest) == want and ok == want,
        )
        self.fake.reset_counts()
        r = self.siuo("answer", "--run", "t", "--config", str(cfg))
        self.record(
            "resume",
            "answer again after a finished run",
            f"{self.fake.hits} requests, exit {r.returncode}",
            self.fake.hits == 0 and r.returncode == 0,
        )
        # two writers at once
        a = self.spawn("judge", "--run", "t", "--config", str(cfg))
        time.sleep(0.7)
        b = self.siuo("judge", "--run", "t", "--config", str(cfg))
        a.communicate()
        refused = b.returncode == 2 and "PID" in (b.stderr + b.stdout)
        self.record("two writers", "a second `judge` while one runs", f"second exit {b.returncode}", refused)
        rounds = 0
        while a.returncode != 0 and rounds < 5:
            rounds += 1
            rr = self.siuo("judge", "--run", "t", "--config", str(cfg), "--retry-failed")
            a.returncode = rr.returncode
        judgments = [json.loads(line) for line in (run / "judgments.jsonl").read_text().splitlines()]
        by_key = {}
        for j in judgments:
            by_key[j["key"]] = j
        verdicts = Counter(j["verdict"] for j in by_key.values())
        failed_responses = {k for k, rec in latest.items() if rec["error"] is not None}
        judged_failures = sum(1 for j in by_key.values() if j["response_key"] in failed_responses)
        self.record(
            "faults",
            f"{sum(self.faults.values())} injected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"judgments {dict(verdicts)}; {judged_failures} failed answers judged",
            judged_failures == 0 and verdicts.get("error", 0) == 0,
        )
        r = self.siuo("score", "--run", "t")
        self.record("faults", "score after faults", f"exit {r.returncode}", r.returncode == 0)
        self.siuo("report", "--run", "t")
        # no key anywhere: every file of the runs, the cache, and a verbose log of a faulty answer stage
        self.siuo("import-siuo", "--gen", str(official["gen"]), "--images", str(official["images"]), "--run", "v")
        r = self.siuo(
            "-v", "answer", "--run", "v", "--config", str(self.config("fresh.toml", max_retries=8)), "--samples", "1"
        )
        leaked = [
            str(p.relative_to(self.work))
            for p in self.work.rglob("*")
            if p.is_file() and "bad" not in p.relative_to(self.work).parts and CANARY.encode() in p.read_bytes()
        ]
        leaked += ["verbose log"] if CANARY in r.stderr + r.stdout else []
        self.record(
            "canary key",
            "key in env, echoed in a header, in bad configs; -v log",
            f"found in {leaked or 'no file'}",
            not leaked,
        )

    def table(self) -> Table:
        t = Table(title="torture run")
        for col in ("part", "tried", "result", "held"):
            t.add_column(col)
        for part, tried, result, held in self.rows:
            t.add_row(part, tried, result, "[green]yes[/]" if held else "[bold red]NO[/]")
        return t


PROBES = ("judge", "boundary", "exports", "reviewapp", "fidelity", "wheel")
"""The second hostile run's probes (issue 20), one module each: bench/torture_<part>.py with `probes(t)`."""


def run_probes(t: Torture, part: str) -> None:
    """One part's probes; a probe that crashes is a row that did not hold, never a lost table."""
    import importlib
    import traceback

    try:
        importlib.import_module(f"torture_{part}").probes(t)
    except Exception as exc:  # noqa: BLE001 - the table must still print
        traceback.print_exc()
        t.record(part, "probes crashed", f"{type(exc).__name__}: {exc}"[:200], False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--fault-rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--part", action="append", choices=("official", *PROBES), help="run only these parts (repeatable); default: all"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="siuo-torture-") as tmp:
        t = Torture(Path(tmp), args.seed, args.fault_rate)
        t0 = time.perf_counter()
        try:
            if not args.part or "official" in args.part:
                official = t.official_files()
                t.bad_inputs(official)
                t.faults_and_kills(official, args.kills)
            for part in PROBES:
                if not args.part or part in args.part:
                    run_probes(t, part)
        finally:
            t.fake.stop()
        Console().print(t.table())
        Console().print(
            f"{len(t.rows)} checks, {sum(not r[3] for r in t.rows)} did not hold; {time.perf_counter() - t0:.0f} s"
        )
        return 0 if all(r[3] for r in t.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
