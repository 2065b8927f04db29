"""Answers made by other tools (VLMEvalKit, lmms-eval, inspect_ai) as this project's Response records.

Why through the run store, matched by case id: `judge`, `score` and `report` then work on them unchanged,
under this project's protocol and judges. Each answer becomes the Response keyed (case, target, form,
sample), so importing the same file again writes nothing (idempotent); an answer whose case id is not in
the run is reported, never guessed; a key already present with another text is left as it is and counted
(import a new run of the tool under a new `--target`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from generator.cases import reviewed_cases
from generator.errors import UserError
from generator.evaluate.protocol import PROTOCOLS, refuse_mixing
from generator.interop import ExternalAnswer, require
from generator.records import AnswerForm, Case, Response
from generator.stage_report import StageOutcome
from generator.store import RunStore
from generator.untrusted import one_line, valid_unicode

FORMATS = ("vlmevalkit", "lmms-eval", "inspect")

MAX_SAMPLES = 16
"""Default bound on the samples imported per case and form (`siuo answer` asks 3 under protocol siuo);
answers with a higher sample index are left out and counted, so a hostile file cannot flood a run."""
MAX_CHARS = 32_000
"""Default bound on an answer's length in characters; a longer answer is cut there and counted."""


def reader(fmt: str) -> Callable[[Path], Iterable[ExternalAnswer]]:
    """The file reader of a format (each imports its framework lazily: they are optional)."""
    if fmt == "vlmevalkit":
        from generator.interop.vlmevalkit import read_predictions

        return read_predictions
    if fmt == "lmms-eval":
        from generator.interop.lmms_eval import read_samples

        return read_samples
    if fmt == "inspect":
        require("inspect_ai", "--format inspect")
        from generator.interop.inspect_task import read_eval_log

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
    samples_cut: int = 0
    """Answers left out because their sample index is past `max_samples`."""
    answers_cut: int = 0
    """Answers longer than `max_chars`, imported cut to that length."""
    replaced_chars: int = 0
    """Invalid characters (lone surrogates) in the file, imported as U+FFFD."""
    max_samples: int = MAX_SAMPLES
    max_chars: int = MAX_CHARS

    @property
    def incomplete(self) -> list[str]:
        """Why this import did not bring in the whole file as it is (empty: it did); the CLI exits 3 on any."""
        out = []
        if self.unmatched:
            out.append(f"{len(self.unmatched)} answer(s) matched no case")
        if self.conflicting:
            out.append(f"{len(self.conflicting)} answer(s) conflicted with earlier imports")
        if self.samples_cut:
            out.append(f"{self.samples_cut} answer(s) past --max-samples {self.max_samples} left out")
        if self.answers_cut:
            out.append(f"{self.answers_cut} answer(s) cut to --max-chars {self.max_chars:,}")
        if self.failed:
            out.append(f"{self.failed} answer(s) recorded as errors by the tool")
        return out

    def summary(self) -> str:
        forms = ", ".join(f"{f}: {n}" for f, n in sorted(self.written.items())) or "none"
        lines = [
            f"{self.path}: {self.read} answer(s) read; {sum(self.written.values())} new response(s) for target "
            f"{self.target} ({forms}), {self.already_there} already imported"
        ]
        if self.failed:
            lines.append(f"{self.failed} answer(s) recorded as errors by the tool: imported as failed, never judged")
        if self.samples_cut:
            lines.append(
                f"{self.samples_cut} answer(s) left out: sample index past the bound of {self.max_samples} "
                "per case (--max-samples)"
            )
        if self.answers_cut:
            lines.append(
                f"{self.answers_cut} answer(s) longer than {self.max_chars:,} characters: cut there (--max-chars)"
            )
        if self.replaced_chars:
            lines.append(f"{self.replaced_chars} invalid Unicode character(s) (lone surrogates) replaced with U+FFFD")
        if self.unmatched:
            first = ", ".join(qid[:40] for qid in self.unmatched[:5]) + (
                f" and {len(self.unmatched) - 5} more" if len(self.unmatched) > 5 else ""
            )
            lines.append(f"{len(self.unmatched)} answer(s) match no case of the run (left out): {first}")
        if self.conflicting:
            lines.append(
                f"{len(self.conflicting)} answer(s) differ from responses already imported for {self.target}: "
                "kept the earlier ones (import another tool run under a new --target)"
            )
        return "\n".join(lines)

    def outcome(self) -> StageOutcome:
        return StageOutcome(summary=[self.summary()], incomplete=self.incomplete)


def read_answers(fmt: str, path: Path) -> Iterator[ExternalAnswer]:
    """The answers of `path` with valid text only. The readers name the line and field of a bad shape; what
    a framework's own parser raises on a corrupt file (any kind) still ends as one line naming the file."""
    read = reader(fmt)
    try:
        yield from read(path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a foreign file through a foreign parser: never a traceback
        raise UserError(
            f"{path}: not a readable {fmt} file ({type(exc).__name__}: {one_line(str(exc), 200)})"
        ) from None


def import_responses(
    store: RunStore,
    fmt: str,
    path: Path,
    target: str,
    *,
    form: str | None = None,
    model: str | None = None,
    protocol: str = "siuo",
    max_samples: int = MAX_SAMPLES,
    max_chars: int = MAX_CHARS,
) -> ImportResponsesReport:
    """Read `path` in format `fmt` and append the new Response records (the caller holds the run lock).

    At most `max_samples` samples per case and form (indices 0 .. max_samples-1) and `max_chars` characters
    per answer come in; what is cut is counted in the report."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    if max_chars < 1:
        raise UserError(f"--max-chars must be at least 1, got {max_chars}")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if form not in (None, "gen", "mcqa", "control"):
        raise UserError(f"--form: unknown form {form!r} (use gen, mcqa or control)")
    given_form = cast("AnswerForm | None", form)  # checked just above
    # question id -> the key answers are filed under: a rejected case takes none, an edited one its revision's
    cases = {f"case-{c.question_id}": c.key for c in reviewed_cases(store)}
    if not cases:
        raise UserError(f"{store.file_for(Case)}: the run has no cases to match answers against")
    existing = store.latest_by_key(Response)
    refuse_mixing("responses", {r.protocol for r in existing.values()}, protocol)
    report = ImportResponsesReport(path=path, target=target, max_samples=max_samples, max_chars=max_chars)
    new: list[Response] = []
    models: set[str] = set()
    for answer in read_answers(fmt, path):
        report.read += 1
        question_id, bad_id = valid_unicode(answer.question_id)
        text, bad_text = valid_unicode(answer.text) if answer.text is not None else (None, 0)
        answer_model, bad_model = valid_unicode(answer.model) if answer.model else (None, 0)
        report.replaced_chars += bad_id + bad_text + bad_model
        case_id = cases.get(f"case-{question_id}")  # the key `records.Case` gives a question id
        if case_id is None:
            report.unmatched.append(question_id)
            continue
        if answer.sample < 0:
            raise UserError(f"{path}: answer to case {question_id!r}: sample index {answer.sample} is negative")
        if answer.sample >= max_samples:
            report.samples_cut += 1
            continue
        if text is not None and len(text) > max_chars:
            text = text[:max_chars]
            report.answers_cut += 1
        response = Response(
            case_id=case_id,
            target=target,
            model=model or answer_model or target,
            form=given_form or answer.form,
            sample=answer.sample,
            text=text,
            error=None if text is not None else f"{fmt}: no answer recorded",
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
        stage.counts.update(
            {
                f"{target}:imported": len(new),
                f"{target}:unmatched": len(report.unmatched),
                f"{target}:samples_cut": report.samples_cut,
                f"{target}:answers_cut": report.answers_cut,
                f"{target}:invalid_unicode_replaced": report.replaced_chars,
            }
        )
    if new:
        with store.update_manifest() as m:
            m.models[f"target:{target}"] = ", ".join(sorted(models))
            m.protocol = protocol
            m.sources.setdefault("imported_responses", []).append(
                {"format": fmt, "file": str(path), "target": target, "responses": len(new)}
            )
    return report
