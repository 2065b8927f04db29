"""Import and export of the official SIUO files (`siuo_gen.json`, `siuo_mcqa.json`).

Import validates everything before it writes anything: a bad file leaves the run folder as it was.
Export writes the official format back, field for field, with the run's answers under the names the
SIUO scoring scripts read (`responses` in siuo_gen.json, `response_mcqa` in siuo_mcqa.json), so those
scripts can score our results unchanged.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from generator.cases import reviewed_cases
from generator.config import read_text
from generator.domains import domain_by_label, load_domains
from generator.errors import UserError
from generator.evaluate.difficulty import case_difficulty
from generator.records import Case, Judgment, Response
from generator.stage_report import StageOutcome
from generator.store import RunStore
from generator.untrusted import loads_untrusted

GEN_FIELDS = ("question_id", "image", "question", "category", "safety_warning", "reference_answer")
MCQA_FIELDS = ("question_id", "image", "question", "category", "options", "correct_option")


class SiuoFormatError(UserError):
    """An official-format file is malformed; the message names the file, the item and the field."""


@dataclass
class ImportReport:
    cases: list[Case]
    gen_path: Path
    mcqa_path: Path | None
    images_dir: Path | None
    missing_images: list[str] = field(default_factory=list)
    replaced_chars: int = 0
    """Invalid characters (lone surrogates) in the files, imported as U+FFFD."""

    def per_domain(self) -> Counter:
        return Counter(c.domain for c in self.cases)

    def summary(self) -> str:
        n_mcqa = sum(1 for c in self.cases if c.options)
        lines = [
            f"imported {len(self.cases)} cases from {self.gen_path}"
            + (f" ({n_mcqa} with MCQA options)" if self.mcqa_path else "")
        ]
        if self.images_dir is None:
            lines.append("no --images folder given: every case is flagged image_missing (answer will skip them)")
        elif self.missing_images:
            first = ", ".join(self.missing_images[:5])
            more = f" and {len(self.missing_images) - 5} more" if len(self.missing_images) > 5 else ""
            lines.append(
                f"{len(self.missing_images)} image(s) missing from {self.images_dir}: {first}{more} (flagged on the cases)"
            )
        else:
            lines.append(f"all {len(self.cases)} images found in {self.images_dir}")
        if self.replaced_chars:
            lines.append(f"{self.replaced_chars} invalid Unicode character(s) (lone surrogates) replaced with U+FFFD")
        return "\n".join(lines)

    def outcome(self) -> StageOutcome:
        """Missing images are flagged, not skipped (`--strict` makes them an error): the import is complete."""
        return StageOutcome(summary=[self.summary()])


# ----------------------------------------------------------------------------------------------------
# Reading and validating
# ----------------------------------------------------------------------------------------------------


def _load_items(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The file's items, and how many invalid characters (lone surrogates) were replaced in them."""
    text = read_text(path, SiuoFormatError, "JSON file")
    try:
        data, replaced = loads_untrusted(text)
    except json.JSONDecodeError as exc:
        raise SiuoFormatError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise SiuoFormatError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, list):
        raise SiuoFormatError(f"{path}: expected a JSON list of items, found {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise SiuoFormatError(f"{path}: item #{i + 1}: expected an object, found {type(item).__name__}")
    return data, replaced


def _where(path: Path, i: int, item: dict) -> str:
    qid = item.get("question_id")
    return f"{path}: item #{i + 1}" + (f" (question_id {qid!r})" if qid is not None else "")


ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""An id becomes part of file names (`case-<id>.png` in export-hf) and keys: a safe set, a length limit."""
MAX_TEXT_CHARS = 10_000
"""The longest question (or other text field) accepted: the official ones are under 1,000 characters."""


def _check_fields(path: Path, i: int, item: dict, fields: tuple[str, ...]) -> None:
    for f in fields:
        if f not in item:
            raise SiuoFormatError(f"{_where(path, i, item)}: missing field {f!r}")
    qid = item["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid.strip()):
        raise SiuoFormatError(f"{_where(path, i, item)}: field 'question_id' must be an integer or a non-empty string")
    if not ID_PATTERN.fullmatch(str(qid)) or str(qid) in (".", ".."):
        raise SiuoFormatError(
            f"{_where(path, i, item)}: field 'question_id': {str(qid)[:40]!r} is not a safe id "
            "(1 to 128 of the characters A-Z a-z 0-9 . _ -)"
        )
    for f in fields:
        if f in ("question_id", "options"):
            continue
        if not isinstance(item[f], str):
            raise SiuoFormatError(
                f"{_where(path, i, item)}: field {f!r} must be a string, found {type(item[f]).__name__}"
            )
        if len(item[f]) > MAX_TEXT_CHARS:
            raise SiuoFormatError(
                f"{_where(path, i, item)}: field {f!r} is {len(item[f]):,} characters long (the limit is {MAX_TEXT_CHARS:,})"
            )


def safe_image_name(path: Path, i: int, item: dict, images_dir: Path | None) -> str:
    """The `image` value, refused if it could point outside the images folder."""
    name = item["image"]
    where = f"{_where(path, i, item)}: field 'image'"
    if not name.strip():
        raise SiuoFormatError(f"{where}: empty file name")
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive or name.startswith(("/", "\\")):
        raise SiuoFormatError(f"{where}: {name!r} is an absolute path; it must be a file name inside the images folder")
    if ".." in posix.parts or ".." in win.parts or "\x00" in name:
        raise SiuoFormatError(f"{where}: {name!r} escapes the images folder")
    if images_dir is not None:
        root = images_dir.resolve()
        target = (images_dir / name).resolve()
        if root != target and root not in target.parents:
            raise SiuoFormatError(f"{where}: {name!r} resolves outside the images folder {images_dir}")
    return name


def _check_unique(path: Path, items: list[dict]) -> None:
    """Ids are compared as text: 1001 and "1001" both become the case key `case-1001`."""
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        qid = item["question_id"]
        if str(qid) in first_seen:
            raise SiuoFormatError(
                f"{path}: item #{i + 1}: duplicate question_id {qid!r} (first at item #{first_seen[str(qid)] + 1})"
            )
        first_seen[str(qid)] = i


def _check_options(path: Path, i: int, item: dict) -> None:
    opts = item["options"]
    where = _where(path, i, item)
    if (
        not isinstance(opts, dict)
        or not opts
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in opts.items())
    ):
        raise SiuoFormatError(f"{where}: field 'options' must be an object of letter -> text")
    if item["correct_option"] not in opts:
        raise SiuoFormatError(
            f"{where}: field 'correct_option' is {item['correct_option']!r}, not one of the options {sorted(opts)}"
        )


_WARNING_PREFIX = re.compile(r"^\s*safety warning:\s*", re.IGNORECASE)
_TRAILING_MARKUP = re.compile(r"\s*\[IMAGE\s*$")


def clean_safety_warning(text: str) -> str:
    """The warning as judges should read it: without a leading "Safety Warning:" and a stray "[IMAGE"
    (both occur in the official file)."""
    return _TRAILING_MARKUP.sub("", _WARNING_PREFIX.sub("", text)).strip()


def read_official(
    gen_path: Path,
    mcqa_path: Path | None = None,
    images_dir: Path | None = None,
    strict: bool = False,
    domains_file: str | None = None,
) -> ImportReport:
    """Parse and validate the official files into Case records; writes nothing."""
    gen_path = Path(gen_path)
    if images_dir is not None:
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise SiuoFormatError(f"{images_dir}: images folder not found")
    items, replaced = _load_items(gen_path)
    known_labels = ", ".join(repr(d.label) for d in load_domains(domains_file))
    for i, item in enumerate(items):
        _check_fields(gen_path, i, item, GEN_FIELDS)
        safe_image_name(gen_path, i, item, images_dir)
        if domain_by_label(item["category"], domains_file) is None:
            raise SiuoFormatError(
                f"{_where(gen_path, i, item)}: field 'category': unknown category {item['category']!r} "
                f"(known: {known_labels}; add custom domains with a domains file)"
            )
    _check_unique(gen_path, items)

    mcqa_by_id: dict[str, dict] = {}
    if mcqa_path is not None:
        mcqa_path = Path(mcqa_path)
        mitems, replaced_mcqa = _load_items(mcqa_path)
        replaced += replaced_mcqa
        gen_ids = {str(it["question_id"]) for it in items}
        for i, item in enumerate(mitems):
            _check_fields(mcqa_path, i, item, MCQA_FIELDS)
            safe_image_name(mcqa_path, i, item, images_dir)
            _check_options(mcqa_path, i, item)
            if str(item["question_id"]) not in gen_ids:
                raise SiuoFormatError(f"{_where(mcqa_path, i, item)}: field 'question_id': no such item in {gen_path}")
        _check_unique(mcqa_path, mitems)
        mcqa_by_id = {str(it["question_id"]): it for it in mitems}

    cases: list[Case] = []
    missing: list[str] = []
    for item in items:
        domain = domain_by_label(item["category"], domains_file)
        assert domain is not None
        image_path = None
        if images_dir is not None and (images_dir / item["image"]).is_file():
            image_path = str((images_dir / item["image"]).resolve())
        else:
            missing.append(item["image"])
        m = mcqa_by_id.get(str(item["question_id"]))
        cases.append(
            Case(
                question_id=item["question_id"],
                image=item["image"],
                image_path=image_path,
                image_missing=image_path is None,
                question=item["question"],
                category=item["category"],
                domain=domain.id,
                safety_warning=item["safety_warning"],
                hazard=clean_safety_warning(item["safety_warning"]),
                reference_answer=item["reference_answer"],
                options=dict(m["options"]) if m else None,
                correct_option=m["correct_option"] if m else None,
                split="siuo",
                provenance={"source": "official", "file": gen_path.name},
            )
        )
    report = ImportReport(
        cases, gen_path, mcqa_path, images_dir, missing_images=missing if images_dir else [], replaced_chars=replaced
    )
    if strict and missing:
        where = images_dir if images_dir is not None else "(no --images folder given)"
        raise SiuoFormatError(
            f"{len(missing)} image(s) missing from {where}, first: {', '.join(missing[:5])} (--strict)"
        )
    return report


def write_import(store: RunStore, report: ImportReport) -> None:
    """Put the imported cases in the run (replacing an earlier import of the same ids), atomically."""
    with store.stage("import") as entry:
        existing = store.read(Case)
        fresh = {c.key: c for c in report.cases}
        # Same-key cases are replaced in place and new ones appended, so a re-import of unchanged
        # files leaves cases.jsonl byte for byte as it was (and rewrites nothing).
        merged = [fresh.pop(c.key, c) for c in existing] + list(fresh.values())
        if merged != existing:
            store.write_all(Case, merged)
        entry.counts.update(cases=len(report.cases), missing_images=sum(c.image_missing for c in report.cases))
        if report.replaced_chars:
            entry.counts["invalid_unicode_replaced"] = report.replaced_chars
    with store.update_manifest() as m:
        m.sources["siuo"] = {
            "gen": str(report.gen_path),
            "mcqa": str(report.mcqa_path) if report.mcqa_path else None,
            "images": str(report.images_dir) if report.images_dir else None,
            "cases": len(report.cases),
            "missing_images": len(report.missing_images) if report.images_dir else len(report.cases),
        }


def import_siuo(
    store: RunStore,
    gen_path: Path,
    mcqa_path: Path | None = None,
    images_dir: Path | None = None,
    strict: bool = False,
    domains_file: str | None = None,
) -> ImportReport:
    report = read_official(gen_path, mcqa_path, images_dir, strict, domains_file)
    write_import(store, report)
    return report


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def _pick_target(responses: list[Response], target: str | None) -> str | None:
    targets = sorted({r.target for r in responses})
    if target is not None:
        if target not in targets:
            raise UserError(f"no responses from target {target!r} in this run (found: {', '.join(targets) or 'none'})")
        return target
    return targets[0] if targets else None


_SAFE = {"safe": 1, "unsafe": 0}
_EFFECTIVE = {"very": 1, "partially": 1, "not": 0}
#: What stands in `responses` / `response_mcqa` where there is no answer: never "", which the published
#: evaluation would judge (and count safe). `response_status` says the same per sample.
FAILED_ANSWER = "[NO RESPONSE: the answer call failed]"
MISSING_ANSWER = "[NO RESPONSE: never asked]"


def _answer_text(r: Response | None) -> tuple[str, str]:
    """(the text to export, its status: ok / failed / missing)."""
    if r is None:
        return MISSING_ANSWER, "missing"
    if r.error is not None or r.text is None:
        return FAILED_ANSWER, "failed"
    return r.text, "ok"


def export_siuo(
    store: RunStore, out_dir: Path, target: str | None = None, split: str | None = None, *, force: bool = False
) -> list[Path]:
    """Write `siuo_gen.json` (and `siuo_mcqa.json` when cases have options) in the official format.

    With responses from `target`, each gen item gets `responses` (its samples in order, a failed or
    never-asked sample marked as such, with `response_status`) and each MCQA item `response_mcqa` (the
    protocol's single sample, sample 0); with judgments, `safetyness` / `helpfulness` as 1 / 0 / -1 lists,
    the fields the official `gen_score.py` reads (-1: no valid verdict, as in the official parser), each
    the majority of the judges (as `siuo score` counts it), and `judgments`: per sample, each judge's
    verdict and raw reply. Once the target is judged at all, every item with `responses` carries
    `safetyness` / `helpfulness` (all -1 for a case whose samples all failed): the published scoring reads
    both keys on every item and stops on a missing one. A case `siuo score` rated also gets its item
    `difficulty` and `share_unsafe` (scores.json), as every export carries them.

    `out_dir` must be empty, new, or an earlier `export-siuo` folder unless `force`; the run's own input
    files (the official files it imported) are never written over (`exports.ExportFolder`).
    """
    from generator.evaluate.score import response_verdict
    from generator.interop.export_folder import ExportFolder, run_inputs

    cases = [c for c in reviewed_cases(store) if split is None or c.split == split]
    folder = ExportFolder(Path(out_dir), "siuo", force=force, inputs=run_inputs(store)).claim()
    responses = store.read_latest(Response)  # a retried answer replaces the failed one
    target = _pick_target(responses, target)
    by_case: dict[tuple[str, str], dict[int, Response]] = defaultdict(dict)
    for r in responses:
        if r.target == target:
            by_case[(r.case_id, r.form)][r.sample] = r
    # Every case is exported with the run's sample count, so a sample never asked shows as missing.
    gen_samples = 1 + max((r.sample for r in responses if r.target == target and r.form == "gen"), default=0)
    by_response: dict[tuple[str, str], dict[str, Judgment]] = defaultdict(dict)
    for j in store.read_latest(Judgment):
        if j.target == target:
            by_response[(j.response_key, j.dimension)][j.judge] = j

    target_judged = bool(by_response)  # then every item with responses gets both verdict keys

    def majority(r: Response | None, dim: str, values: dict[str, int]) -> int:
        judged = by_response.get((r.key, dim), {}) if r is not None else {}
        return values.get(response_verdict([j.verdict for j in judged.values()], dim), -1)

    def raw(r: Response | None) -> dict[str, dict[str, dict[str, str | None]]]:
        if r is None:
            return {}
        return {
            dim: {
                name: {"verdict": j.verdict, "raw": j.raw}
                for name, j in sorted(by_response.get((r.key, dim), {}).items())
            }
            for dim in ("safety", "effectiveness")
            if (r.key, dim) in by_response
        }

    difficulty = case_difficulty(store)
    gen_items, mcqa_items = [], []
    for c in cases:
        item = {f: getattr(c, f) for f in GEN_FIELDS}
        if "review" in c.provenance:  # an edited case says which revision this is
            item["revision"] = c.provenance["review"]["revision"]
        rated = difficulty.get(c.key)
        if rated:  # the case's item difficulty across the scored targets (scores.json), as the other exports carry
            item["difficulty"] = rated.difficulty
            item["share_unsafe"] = rated.share_unsafe
        gen_by_sample = by_case.get((c.key, "gen"))
        if gen_by_sample:
            gen_rs = [gen_by_sample.get(k) for k in range(gen_samples)]
            texts = [_answer_text(r) for r in gen_rs]
            item["responses"] = [t for t, _ in texts]
            item["response_status"] = [s for _, s in texts]
            if target_judged:
                item["safetyness"] = [majority(r, "safety", _SAFE) for r in gen_rs]
                item["helpfulness"] = [majority(r, "effectiveness", _EFFECTIVE) for r in gen_rs]
                item["judgments"] = [raw(r) for r in gen_rs]
        gen_items.append(item)
        if c.options:
            mitem = {
                "question_id": c.question_id,
                "image": c.image,
                "question": c.question,
                "category": c.category,
                "options": c.options,
                "correct_option": c.correct_option,
            }
            mcqa_by_sample = by_case.get((c.key, "mcqa"))
            if mcqa_by_sample:
                mitem["response_mcqa"], mitem["response_status"] = _answer_text(mcqa_by_sample.get(0))
            mcqa_items.append(mitem)

    written = [folder.write_text("siuo_gen.json", _dumps(gen_items))]
    if mcqa_items:
        written.append(folder.write_text("siuo_mcqa.json", _dumps(mcqa_items)))
    folder.commit(run=store.name, target=target)  # a siuo_mcqa.json of an earlier export is removed when none now
    return written


def _dumps(items: list[dict]) -> str:
    return json.dumps(items, ensure_ascii=False, indent=4)
