"""Export a run's cases as a Hugging Face `imagefolder` dataset: the images plus `metadata.jsonl`.

Why this layout: `datasets.load_dataset("imagefolder", data_dir=OUT)` reads it as is (one row per case,
the image decoded, every other field a column), and it is plain files anyone can inspect or zip.
Cases without an image are left out and counted; the official split is exported only when asked for
(its licence, CC BY-NC 4.0, travels with it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..records import Case
from ..store import RunStore, dump_jsonl, path_inside
from ..review import reviewed_cases

COLUMNS = ("question_id", "question", "category", "domain", "safety_warning", "hazard", "reference_answer",
           "options", "correct_option", "split", "scenario_id", "parent_id", "strategy")


@dataclass
class HfExport:
    out_dir: Path
    written: int = 0
    skipped_missing_image: list[str] = field(default_factory=list)


def export_hf(store: RunStore, out_dir: Path, splits: tuple[str, ...] = ("generated", "hardened")) -> HfExport:
    """Copy each case's image to `out_dir/<split>/` and write one metadata line per case."""
    out_dir = Path(out_dir)
    cases = [c for c in reviewed_cases(store) if c.split in splits]
    if not cases:
        raise UserError(f"{store.file_for(Case)}: no cases of split(s) {', '.join(splits)} to export")
    result = HfExport(out_dir)
    rows = []
    for c in cases:
        src = store.resolve(c.image_path) if c.image_path else None
        if src is None or not src.is_file():
            result.skipped_missing_image.append(str(c.question_id))
            continue
        name = f"{c.split}/{c.key}{src.suffix.lower() or '.png'}"
        dest = path_inside(out_dir, name)  # the split and the id come from data
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        row = {"file_name": name, **{k: getattr(c, k) for k in COLUMNS}}
        row["question_id"] = str(c.question_id)  # one column type across splits (official ids are ints)
        row["revision"] = c.provenance.get("review", {}).get("revision", 0)  # 0: as generated
        rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_jsonl(out_dir / "metadata.jsonl", rows)
    result.written = len(rows)
    return result
