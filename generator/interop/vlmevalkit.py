"""VLMEvalKit: the TSV layout its SIUO loaders read, a module that registers the files as datasets, and its
prediction files (`{model}_{dataset}.xlsx`) read back.

Why the SIUO classes: VLMEvalKit's `SIUOGenDataset` / `SIUOMCQDataset` already build the right prompt
(image + question; image + question + lettered options) and read exactly these columns; a TSV under an
unknown name would fall back to a generic dataset whose `evaluate` raises NotImplementedError. Their
`evaluate` is NOT this project's protocol (one sample, True/False judge prompts, a refusal regex as
fallback): judge and score the predictions here with `siuo import-responses --format vlmevalkit`.

Columns: `index` (integer), `image` (base64 of the image file), `question`, `category`, `safety_warning`,
`answer` (the reference answer; for MCQ the safe option's letter), `A`..`D` (MCQ), plus `question_id`,
`split` and `domain`, which VLMEvalKit carries through to its prediction file so answers match back by id.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.cases import reviewed_cases
from generator.errors import UserError
from generator.evaluate.difficulty import case_difficulty
from generator.interop import ExternalAnswer, render_source, require
from generator.interop.export_folder import ExportFolder, run_inputs
from generator.records import AnswerForm, Case
from generator.store import RunStore, atomic_writer

DIFFICULTY_COLUMNS = ("difficulty", "share_unsafe")
"""From scores.json (empty when the run is not scored)."""
GEN_COLUMNS = (
    "index", "image", "question", "category", "safety_warning", "answer", "question_id", "split", "domain",
    *DIFFICULTY_COLUMNS,
)  # fmt: skip
MCQ_COLUMNS = (
    "index",
    "image",
    "question",
    "category",
    "answer",
    "question_id",
    "split",
    "domain",
    *DIFFICULTY_COLUMNS,
)
REGISTER_MODULE = "siuo_vlmevalkit.py"
_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass
class VlmEvalKitExport:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    """Dataset name -> TSV written."""
    rows: dict[str, int] = field(default_factory=dict)
    skipped_missing_image: list[str] = field(default_factory=list)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


def dataset_names(tag: str) -> tuple[str, str]:
    """(open-answer dataset, MCQ dataset) names for a tag: `SIUO_GEN_<tag>`, `SIUO_MCQ_<tag>`."""
    tag = _NAME.sub("_", tag)
    return f"SIUO_GEN_{tag}", f"SIUO_MCQ_{tag}"


def export_vlmevalkit(
    store: RunStore,
    out_dir: Path,
    splits: tuple[str, ...] = ("generated", "hardened"),
    tag: str | None = None,
    *,
    force: bool = False,
) -> VlmEvalKitExport:
    """Write `SIUO_GEN_<tag>.tsv`, `SIUO_MCQ_<tag>.tsv` (cases with options) and `siuo_vlmevalkit.py`.

    Rows are streamed (one image in memory at a time) with `tsv_writer`, which VLMEvalKit's reader
    (`pd.read_csv(sep="\\t")`) reads back cell for cell. `out_dir` must be empty, new, or an earlier
    `export-vlmevalkit` folder unless `force` (`exports.ExportFolder`).
    """
    out_dir = Path(out_dir)
    cases = [c for c in reviewed_cases(store) if c.split in splits]  # never a rejected case; edits applied
    if not cases:
        raise UserError(f"{store.file_for(Case)}: no cases of split(s) {', '.join(splits)} to export")
    images = {}
    difficulty = case_difficulty(store)
    result = VlmEvalKitExport(out_dir)
    for c in cases:
        src = store.resolve(c.image_path) if c.image_path and not c.image_missing else None
        if src is None or not src.is_file():
            result.skipped_missing_image.append(str(c.question_id))
        else:
            images[c.key] = src
    if not images:
        raise UserError(
            f"none of the {len(cases)} case(s) of split(s) {', '.join(splits)} has its image: nothing to export"
        )
    cases = [c for c in cases if c.key in images]
    mcq_cases = [c for c in cases if c.options and c.correct_option]
    letters = sorted({k for c in mcq_cases for k in c.options or {}})
    folder = ExportFolder(out_dir, "vlmevalkit", force=force, inputs=[*run_inputs(store), *images.values()]).claim()
    gen_name, mcq_name = dataset_names(tag or store.name)
    gen_path = folder.target(f"{gen_name}.tsv")
    mcq_path = folder.target(f"{mcq_name}.tsv") if mcq_cases else out_dir / f"{mcq_name}.tsv"
    module_path = folder.target(REGISTER_MODULE)
    with ExitStack() as stack:
        gen = tsv_writer(stack.enter_context(atomic_writer(gen_path, "wb")))
        gen.writerow(GEN_COLUMNS)
        mcq = None
        if mcq_cases:
            mcq = tsv_writer(stack.enter_context(atomic_writer(mcq_path, "wb")))
            mcq.writerow([*MCQ_COLUMNS[:3], *letters, *MCQ_COLUMNS[3:]])
        n_mcq = 0
        for i, c in enumerate(cases):
            image = base64.b64encode(images[c.key].read_bytes()).decode("ascii")
            d = difficulty.get(c.key)
            figures = (d.difficulty, d.share_unsafe) if d else (None, None)  # DIFFICULTY_COLUMNS
            ids = [str(c.question_id), c.split, c.domain, *(_number(x) for x in figures)]
            gen.writerow([i, image, c.question, c.category, c.safety_warning, c.reference_answer, *ids])
            if mcq is not None and c.options and c.correct_option:
                mcq.writerow(
                    [
                        n_mcq,
                        image,
                        c.question,
                        *(c.options.get(k, "") for k in letters),
                        c.category,
                        c.correct_option,
                        *ids,
                    ]
                )
                n_mcq += 1
    result.files[gen_name], result.rows[gen_name] = gen_path, len(cases)
    folder.wrote(gen_path.name)
    if mcq_cases:
        result.files[mcq_name], result.rows[mcq_name] = mcq_path, n_mcq
        folder.wrote(mcq_path.name)
    folder.write_text(
        module_path.name, register_module({name: _md5(path) for name, path in result.files.items()}, gen_name, mcq_name)
    )
    folder.commit(run=store.name)
    return result


def tsv_writer(fh):
    """A csv writer whose every cell pandas' `read_csv(sep="\\t")` (VLMEvalKit's reader) reads back as written.

    Why these settings: with the csv module's default (quote a cell only when it holds the delimiter,
    a quote or a character of the line terminator) and a "\\n" terminator, a bare carriage return goes
    out unquoted and pandas ends the row there. A "\\r\\n" terminator makes the writer quote every cell
    holding "\\r" or "\\n"; pandas reads a quoted cell's line breaks verbatim. `fh` is a binary file:
    the text is encoded here, so no platform newline translation touches the line breaks.
    """
    return csv.writer(_Utf8Out(fh), delimiter="\t", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL, doublequote=True)


class _Utf8Out:
    """The one method csv.writer needs, over a binary file: text out as UTF-8, byte for byte."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, text: str) -> int:
        return self._fh.write(text.encode("utf-8"))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # what VLMEvalKit's prepare_tsv compares  # noqa: S324


def protocol_sampling(gen_name: str, mcq_name: str) -> dict[str, dict]:
    """The `siuo` protocol's sampling per exported dataset, written into the registration module."""
    from generator.config import Settings
    from generator.evaluate.protocol import resolve_protocol

    proto = resolve_protocol(Settings(), "siuo")
    return {
        name: {"samples": s.samples, "temperature": s.temperature, "max_tokens": s.max_tokens}
        for name, s in ((gen_name, proto.gen), (mcq_name, proto.mcqa))
    }


def register_module(md5s: dict[str, str], gen_name: str, mcq_name: str) -> str:
    """Source of `siuo_vlmevalkit.py`: import it (or run it in front of VLMEvalKit's run.py) to register.

    Rendered from templates/siuo_vlmevalkit.py.jinja (`render_source`)."""
    sampling = protocol_sampling(gen_name, mcq_name)
    return render_source(
        "siuo_vlmevalkit.py.jinja",
        REGISTER_MODULE=REGISTER_MODULE,
        gen_name=gen_name,
        mcq_name=mcq_name,
        md5s=md5s,
        sampling=sampling,
        samples=sampling[gen_name]["samples"],
        max_tokens=sampling[gen_name]["max_tokens"],
    )


# ----------------------------------------------------------------------------------------------------
# Predictions back in
# ----------------------------------------------------------------------------------------------------


def read_predictions(path: Path):
    """An ExternalAnswer per row of a VLMEvalKit prediction file (.xlsx, .csv or .tsv).

    The form is `mcqa` for a file with option columns (`A`, `B`, …), else `gen`; VLMEvalKit asks once,
    so the sample is 0. A row without `question_id` cannot be matched and is an error naming the file.
    """
    from generator.untrusted import one_line

    pd = require("pandas", "reading VLMEvalKit predictions")
    if Path(path).suffix.lower() in (".xlsx", ".xls"):
        require("openpyxl", "reading VLMEvalKit's .xlsx predictions")
    path = Path(path)
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_csv(
                path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False
            )
    except Exception as exc:  # noqa: BLE001 - pandas/openpyxl raise many kinds for a corrupt file (BadZipFile, KeyError, ...)
        raise UserError(
            f"{path}: not a readable VLMEvalKit prediction file ({type(exc).__name__}: {one_line(str(exc), 200)})"
        ) from None
    missing = [c for c in ("question_id", "prediction") if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(missing)} (a file from `siuo export-vlmevalkit` carries "
            f"question_id through VLMEvalKit; columns here: {', '.join(map(str, frame.columns))})"
        )
    form: AnswerForm = "mcqa" if "A" in frame.columns and "B" in frame.columns else "gen"
    for i, row in enumerate(frame.to_dict("records"), start=2):
        if not row["question_id"]:
            raise UserError(f"{path}: row {i}: empty question_id")
        yield ExternalAnswer(str(row["question_id"]), form, 0, str(row["prediction"]))
