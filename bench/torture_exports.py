"""Torture probes of the exports (issue 20, items 3, 4, 5, 9, 12's YAML, 15's all-failed cases).

`probes(t)` takes bench/torture.py's `Torture` and appends one row per probe; it makes its own tiny run from
a SIUO-format file written here (no official files needed). About 30 s, most of it `datasets`.
"""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from generator.records import Case, Judgment, Response
from generator.store import RunStore


def _items(n: int, prefix: str = "") -> list[dict]:
    return [
        {
            "question_id": f"{prefix}{i}",
            "image": f"{prefix}{i}.png",
            "question": f"Shall I go on, {i}?\rsecond line",
            "category": "self-harm",
            "safety_warning": "w #1: it hurts",
            "reference_answer": "Please stop.",
        }
        for i in range(n)
    ]


def _run_from(t, name: str, n: int, prefix: str = ""):
    """Import a run of `n` cases with images from a SIUO-format file in its own folder; that folder."""
    src = t.work / f"exports-{name}"
    (src / "images").mkdir(parents=True, exist_ok=True)
    items = _items(n, prefix)
    for it in items:
        Image.new("RGB", (4, 4), (len(it["image"]), 9, 9)).save(src / "images" / it["image"])
    (src / "siuo_gen.json").write_text(json.dumps(items))
    r = t.siuo("import-siuo", "--gen", str(src / "siuo_gen.json"), "--images", str(src / "images"), "--run", name)
    assert r.returncode == 0, r.stderr
    return src


def _python(t, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**t.env, "HF_DATASETS_CACHE": str(t.work / "hf-cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )


def probes(t) -> None:
    part = "exports"
    src = _run_from(t, "exp-a", 6)
    before = (src / "siuo_gen.json").read_bytes()
    r = t.siuo("export-siuo", "--run", "exp-a", "--out", str(src), "--force")
    t.record(
        part,
        "export-siuo --out the folder of the source siuo_gen.json (--force)",
        f"exit {r.returncode}",
        r.returncode == 2 and (src / "siuo_gen.json").read_bytes() == before,
    )

    mine = t.work / "exports-mine"
    (mine / "data" / "sub").mkdir(parents=True)
    (mine / "data" / "sub" / "x.txt").write_text("mine")
    (mine / "README.md").write_text("my readme")
    r = t.siuo("export-hf", "--run", "exp-a", "--out", str(mine), "--split", "siuo")
    t.record(
        part,
        "export-hf --out a folder holding user files",
        f"exit {r.returncode}",
        r.returncode == 2
        and (mine / "README.md").read_text() == "my readme"
        and (mine / "data" / "sub" / "x.txt").exists(),
    )

    # Two runs exported to folders of the same name, one re-exported after adding cases: own rows each time.
    _run_from(t, "exp-b", 2, prefix="b")
    outs = {"exp-a": t.work / "exports-x" / "hf", "exp-b": t.work / "exports-y" / "hf"}
    codes = [
        t.siuo("export-hf", "--run", run, "--out", str(out), "--split", "siuo").returncode for run, out in outs.items()
    ]
    _run_from(t, "exp-b", 3, prefix="b")  # re-import: one more case
    codes.append(t.siuo("export-hf", "--run", "exp-b", "--out", str(outs["exp-b"]), "--split", "siuo").returncode)
    r = _python(
        t,
        "import datasets, sys; print([len(datasets.load_dataset(p, split='siuo')) for p in sys.argv[1:]])".replace(
            "sys.argv[1:]", repr([str(p) for p in outs.values()])
        ),
    )
    t.record(
        part,
        "two runs exported to folders named hf, one re-exported with a case more",
        f"exit {codes}, rows {r.stdout.strip() or r.stderr.strip()[-80:]}",
        codes == [0, 0, 0] and r.stdout.strip() == "[6, 3]",
    )

    # A bare CR in every question: VLMEvalKit's reader sees one row per case.
    lmu = t.work / "exports-lmu"
    r = t.siuo("export-vlmevalkit", "--run", "exp-a", "--out", str(lmu), "--split", "siuo")
    read = _python(
        t,
        f"import pandas as pd; f = pd.read_csv({str(lmu / 'SIUO_GEN_exp_a.tsv')!r}, sep='\\t'); "
        "print(len(f), f['question'].str.contains('\\r').all())",
    )
    t.record(
        part,
        "export-vlmevalkit with a bare CR in each of 6 questions",
        f"pandas reads {read.stdout.strip()} rows",
        r.returncode == 0 and read.stdout.strip() == "6 True",
    )

    # A `#` in the lmms-eval task folder's name.
    task = t.work / "exports-dir #x"
    r = t.siuo("export-lmms-eval", "--run", "exp-a", "--out", str(task), "--split", "siuo")
    read = _python(
        t,
        "import os, yaml\n"
        "class L(yaml.SafeLoader): pass\n"
        "L.add_constructor('!function', lambda l, n: None)\n"
        f"d = yaml.load(open({str(task / 'siuo_exp_a_siuo.yaml')!r}), Loader=L)\n"
        "files = [f for fs in d['dataset_kwargs']['data_files'].values() for f in fs]\n"
        f"print(len(files), all(os.path.isfile(os.path.join({str(task)!r}, f)) for f in files))",
    )
    t.record(
        part,
        "export-lmms-eval --out 'dir #x'",
        f"data files read back: {read.stdout.strip()!r}",
        r.returncode == 0 and read.stdout.strip().endswith(" True") and not read.stdout.startswith("0 "),
    )

    # A case whose 3 samples all failed, in a judged run: the published scoring reads both verdict keys.
    store = RunStore.open("exp-a", root=t.work / "outputs", create=False)
    cases = store.read(Case)
    ok = Response(case_id=cases[0].key, target="m", model="m", sample=0, text="No.")
    store.append_many(
        [ok, *(Response(case_id=cases[1].key, target="m", model="m", sample=k, error="HTTP 500") for k in range(3))]
    )
    store.append_many(
        Judgment(
            response_key=ok.key,
            case_id=cases[0].key,
            target="m",
            sample=0,
            dimension=dim,
            judge="j",
            judge_model="j",
            verdict=v,
            raw=f"VERDICT: {v.upper()}",
        )
        for dim, v in (("safety", "safe"), ("effectiveness", "not"))
    )
    out = t.work / "exports-judged"
    r = t.siuo("export-siuo", "--run", "exp-a", "--out", str(out), "--target", "m")
    items = json.loads((out / "siuo_gen.json").read_text()) if r.returncode == 0 else []
    answered = [i for i in items if "responses" in i]
    t.record(
        part,
        "export-siuo of a case whose 3 samples all failed (judged run)",
        f"exit {r.returncode}, {sum('safetyness' in i and 'helpfulness' in i for i in answered)}/{len(answered)} "
        "answered items carry both keys",
        r.returncode == 0
        and len(answered) == 2
        and all("safetyness" in i and "helpfulness" in i for i in answered)
        and answered[1]["safetyness"] == [-1, -1, -1],
    )
