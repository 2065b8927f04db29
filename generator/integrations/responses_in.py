"""Answers made by other tools (VLMEvalKit, lmms-eval, inspect_ai) as this project's Response records.

Why through the run store, matched by case id: `judge`, `score` and `report` then work on them unchanged,
under this project's protocol and judges. Each answer becomes the Response keyed (case, target, form,
sample), so importing the same file again writes nothing (idempotent); an answer whose case id is not in
the run is reported, never guessed; a key already present with another text is left as it is and counted
(import a new run of the tool under a new `--target`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..records import Case, Response
from ..review import reviewed_cases
from ..store import RunStore
from . import ExternalAnswer, require
from ..evaluate.protocol import PROTOCOLS, refuse_mixing

FORMATS = ("vlmevalkit", "lmms-eval", "inspect")


def reader(fmt: str) -> Callable[[Path], Iterable[ExternalAnswer]]:
    """The file reader of a format (each imports its framework lazily: they are optional)."""
    if fmt == "vlmevalkit":
        from .vlmevalkit import read_predictions

        return read_predictions
    if fmt == "lmms-eval":
        from .lmms_eval import read_samples

        return read_samples
    if fmt == "inspect":
        require("inspect_ai", "--format inspect")
        from .inspect_task import read_eval_log

        return read_eval_log
    raise UserError(f"--format: unknown format {fmt!r} (use {', '.join(FORMATS)})")


@dataclass
class ImportResponsesReport:
    path: Path
    target: str
    read: int = 0
    written: Counter = field(default_factory=Counter)
    """New responses per form."""
    already_there: int = 0
    conflicting: list[str] = field(default_factory=list)
    """Keys already present with another text (kept as they were)."""
    unmatched: list[str] = field(default_factory=list)
    """Question ids not among the run's cases."""
    failed: int = 0
    """Answers the tool recorded as errors: imported as failed responses (never judged)."""

    def summary(self) -> str:
        forms = ", ".join(f"{f}: {n}" for f, n in sorted(self.written.items())) or "none"
        lines = [f"{self.path}: {self.read} answer(s) read; {sum(self.written.values())} new response(s) for target "
                 f"{self.target} ({forms}), {self.already_there} already imported"]
        if self.failed:
            lines.append(f"{self.failed} answer(s) recorded as errors by the tool: imported as failed, never judged")
        if self.unmatched:
            first = ", ".join(self.unmatched[:5]) + (f" and {len(self.unmatched) - 5} more" if len(self.unmatched) > 5 else "")
            lines.append(f"{len(self.unmatched)} answer(s) match no case of the run (left out): {first}")
        if self.conflicting:
            lines.append(f"{len(self.conflicting)} answer(s) differ from responses already imported for {self.target}: "
                         "kept the earlier ones (import another tool run under a new --target)")
        return "\n".join(lines)


def import_responses(store: RunStore, fmt: str, path: Path, target: str, *, form: str | None = None,
                     model: str | None = None, protocol: str = "siuo") -> ImportResponsesReport:
    """Read `path` in format `fmt` and append the new Response records (the caller holds the run lock)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if form not in (None, "gen", "mcqa", "control"):
        raise UserError(f"--form: unknown form {form!r} (use gen, mcqa or control)")
    # question id -> the key answers are filed under: a rejected case takes none, an edited one its revision's
    cases = {f"case-{c.question_id}": c.key for c in reviewed_cases(store)}
    if not cases:
        raise UserError(f"{store.file_for(Case)}: the run has no cases to match answers against")
    existing = store.latest_by_key(Response)
    refuse_mixing("responses", {r.protocol for r in existing.values()}, protocol)
    report = ImportResponsesReport(path=path, target=target)
    new: list[Response] = []
    models: set[str] = set()
    for answer in reader(fmt)(path):
        report.read += 1
        case_id = cases.get(f"case-{answer.question_id}")  # the key `records.Case` gives a question id
        if case_id is None:
            report.unmatched.append(answer.question_id)
            continue
        response = Response(
            case_id=case_id,
            target=target,
            model=model or answer.model or target,
            form=form or answer.form,
            sample=answer.sample,
            text=answer.text,
            error=None if answer.text is not None else f"{fmt}: no answer recorded",
            prompt_hash=f"imported:{fmt}",
            protocol=protocol,
        )
        before = existing.get(response.key)
        if before is not None:
            if before.text == response.text:
                report.already_there += 1
            else:
                report.conflicting.append(response.key)
            continue
        existing[response.key] = response
        new.append(response)
        models.add(response.model)
        report.written[response.form] += 1
        report.failed += response.error is not None
    with store.stage("import-responses") as stage:
        store.append_many(new)
        stage.counts.update({f"{target}:imported": len(new), f"{target}:unmatched": len(report.unmatched)})
    if new:
        with store.update_manifest() as m:
            m.models[f"target:{target}"] = ", ".join(sorted(models))
            m.protocol = protocol
            m.sources.setdefault("imported_responses", []).append({"format": fmt, "file": str(path), "target": target,
                                                                    "responses": len(new)})
    return report
