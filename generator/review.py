"""Review: a person reads what passed the checks and accepts, rejects or edits each case.

Three ways in: the web app (`siuo review --run R --serve`, in `generator.review_app`), an interactive
terminal loop (`siuo review --run R`), and a self-contained HTML sheet (`siuo review --run R --sheet
review.html`) to share offline. Decisions and edits are Review records in reviews.jsonl (append-only; a
later decision by the same reviewer replaces their earlier one; an edit is a new revision). Every later
stage reads cases through `reviewed_cases`: a rejected case is never exported or evaluated, an edited one
is used in its latest revision.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from generator.models.messages import ImageError, image_data_url
from generator.errors import UserError
from generator.records import Case, Render, Review
from generator.store import RunStore, write_text_atomic
from generator.terminal import printable


REJECT_REASONS: dict[str, str] = {
    "not-benign-image": "the image alone is unsafe",
    "not-benign-text": "the question alone is unsafe",
    "no-hazard": "the pair carries no real hazard",
    "text-gives-it-away": "the question reveals the hazard (too easy)",
    "image-mismatch": "the image does not show what the case needs",
    "reference-wrong": "the reference answer is wrong or unsafe",
    "duplicate": "a near-duplicate of another case",
    "other": "other (see note)",
}
"""Why a case is rejected: stored as the key in `Review.reason`; free text goes in `Review.note`."""

DECISIONS = ("accept", "reject", "skip")
REVISION_MARK = "@r"
"""A revised case's key is `<case key>@r<revision>`: answers to the old text are never reused for the new."""


class RevisionConflict(UserError):
    """A decision or edit made on a revision of the case that is no longer its latest: another reviewer
    saved a revision meanwhile. Recording it would put old text back over theirs, or record an accept of
    text this reviewer never saw, so nothing is written."""

    def __init__(self, case_key: str, base: int, current: int):
        super().__init__(f"case {case_key} is at revision {current}, not {base} as when this decision was made: "
                         "nothing recorded")
        self.case_key, self.base, self.current = case_key, base, current


def _check_base(state: ReviewState, case_key: str, base_revision: int | None) -> None:
    if base_revision is not None and base_revision != state.revision(case_key):
        raise RevisionConflict(case_key, base_revision, state.revision(case_key))


def latest_decisions(store: RunStore) -> dict[str, Review]:
    """Per case, the newest decision of any reviewer (edits are not decisions)."""
    out: dict[str, Review] = {}
    for r in store.iter_records(Review):
        if r.decision != "edit":
            out[r.case_id] = r
    return out


@dataclass
class ReviewState:
    """Every reviewer's current decision and every edit, per case, read from reviews.jsonl."""

    decisions: dict[str, dict[str, Review]] = field(default_factory=dict)
    """case key -> reviewer -> that reviewer's latest decision (skips included)."""
    edits: dict[str, list[Review]] = field(default_factory=dict)
    """case key -> its edits, oldest revision first."""

    @classmethod
    def load(cls, store: RunStore) -> "ReviewState":
        state = cls()
        for r in store.iter_records(Review):
            if r.decision == "edit":
                state.edits.setdefault(r.case_id, []).append(r)
            else:
                state.decisions.setdefault(r.case_id, {})[r.reviewer] = r
        for edits in state.edits.values():
            edits.sort(key=lambda e: e.revision)
        return state

    def latest_edit(self, case_key: str) -> Review | None:
        edits = self.edits.get(case_key)
        return edits[-1] if edits else None

    def revision(self, case_key: str) -> int:
        edit = self.latest_edit(case_key)
        return edit.revision if edit else 0

    def votes(self, case_key: str) -> dict[str, str]:
        """reviewer -> accept / reject (skips are not votes)."""
        return {who: r.decision for who, r in self.decisions.get(case_key, {}).items() if r.decision != "skip"}

    def rejected(self, case_key: str) -> bool:
        """Rejected when any reviewer's current decision is reject: a case one person refused never
        enters a split unnoticed (the summary page lists such disagreements to settle)."""
        return "reject" in self.votes(case_key).values()

    def status(self, case_key: str) -> str:
        """pending (no vote) / accepted / rejected (all votes agree) / disputed (votes differ)."""
        votes = set(self.votes(case_key).values())
        if not votes:
            return "pending"
        if len(votes) > 1:
            return "disputed"
        return "accepted" if votes == {"accept"} else "rejected"


def revised(case: Case, edit: Review | None) -> Case:
    """`case` as its latest edit left it, under the key `<key>@r<revision>`; the provenance says so."""
    if edit is None:
        return case
    question = edit.question if edit.question is not None else case.question
    hazard = edit.hazard if edit.hazard is not None else (case.hazard or case.safety_warning)
    reference = edit.reference_answer if edit.reference_answer is not None else case.reference_answer
    options = dict(case.options) if case.options else None
    if options and case.correct_option in options:
        options[case.correct_option] = reference  # the MCQA form's right answer is the reference
    image_path = edit.image_path or case.image_path
    return case.model_copy(update={
        "key": f"{case.key}{REVISION_MARK}{edit.revision}",
        "question": question,
        "hazard": hazard,
        "safety_warning": hazard,
        "reference_answer": reference,
        "options": options,
        "image_path": image_path,
        "image": Path(image_path).name if image_path else case.image,
        "provenance": {**case.provenance, "review": {
            "original_key": case.key, "revision": edit.revision, "edited_by": edit.reviewer,
            "edited": edit.created, "edit_key": edit.key}},
    })


def reviewed_cases(store: RunStore, require_accept: bool = False, state: ReviewState | None = None) -> list[Case]:
    """The cases later stages use: never a rejected one, each in its latest revision (with
    `require_accept`: only cases some reviewer accepted and none rejected). Exports, answer, judge and
    score all read cases through here."""
    state = state or ReviewState.load(store)
    keep = []
    for c in store.read(Case):
        if state.rejected(c.key):
            continue
        if require_accept and "accept" not in state.votes(c.key).values():
            continue
        keep.append(revised(c, state.latest_edit(c.key)))
    return keep


def reviewed_keys(store: RunStore) -> tuple[set[str], dict[str, str]]:
    """(rejected case keys, case key -> its revised key) for readers that stream cases.jsonl raw."""
    state = ReviewState.load(store)
    rejected = {k for k in state.decisions if state.rejected(k)}
    renamed = {k: f"{k}{REVISION_MARK}{e[-1].revision}" for k, e in state.edits.items() if e}
    return rejected, renamed


def record_decision(store: RunStore, case_key: str, reviewer: str, decision: str, reason: str | None = None,
                    note: str = "", base_revision: int | None = None) -> Review:
    """Append a decision; the caller holds the run lock (`RunStore.writing`). With `base_revision` (the
    revision the reviewer was shown), a case revised since raises RevisionConflict and records nothing."""
    if decision not in DECISIONS:
        raise UserError(f"unknown decision {decision!r} (use {', '.join(DECISIONS)})")
    if decision == "reject" and reason is not None and reason not in REJECT_REASONS:
        raise UserError(f"unknown reject reason {reason!r} (use {', '.join(REJECT_REASONS)})")
    state = ReviewState.load(store)
    _check_base(state, case_key, base_revision)
    review = Review(case_id=case_key, decision=decision, reviewer=reviewer, note=note,
                    reason=reason if decision == "reject" else None, revision=state.revision(case_key))
    store.append(review)
    return review


def record_edit(store: RunStore, case: Case, reviewer: str, question: str | None = None, hazard: str | None = None,
                reference_answer: str | None = None, render: Render | None = None, note: str = "",
                base_revision: int | None = None) -> Review | None:
    """Append a new revision of `case` (the whole revised text and image); None when nothing changed.
    The caller holds the run lock, so two reviewers never write the same revision number. With
    `base_revision` (the revision the edited text started from), a case revised since raises
    RevisionConflict: the edit would silently undo the other reviewer's."""
    state = ReviewState.load(store)
    _check_base(state, case.key, base_revision)
    current = revised(case, state.latest_edit(case.key))
    last = state.latest_edit(case.key)
    new = {
        "question": current.question if question is None else question,
        "hazard": current.hazard if hazard is None else hazard,
        "reference_answer": current.reference_answer if reference_answer is None else reference_answer,
        "image_path": render.path if render is not None else current.image_path,
    }
    old = {"question": current.question, "hazard": current.hazard, "reference_answer": current.reference_answer,
           "image_path": current.image_path}
    if new == old:
        return None
    review = Review(case_id=case.key, decision="edit", reviewer=reviewer, note=note,
                    revision=state.revision(case.key) + 1, **new,
                    render_key=render.key if render is not None else (last.render_key if last else None))
    store.append(review)
    return review


def pending_cases(store: RunStore, reviewer: str, split: str | None = None) -> list[Case]:
    """Cases this reviewer has not decided on yet (generated and hardened by default: the official set
    was reviewed by its authors)."""
    done = {r.case_id for r in store.iter_records(Review) if r.reviewer == reviewer and r.decision in ("accept", "reject")}
    splits = {split} if split else {"generated", "hardened"}
    return [c for c in store.read(Case) if c.split in splits and c.key not in done]


def show_case(console: Console, store: RunStore, case: Case, index: int, total: int) -> None:
    image = store.resolve(case.image_path) if case.image_path else None
    body = (
        f"[bold]domain[/] {printable(case.domain)}   [bold]split[/] {case.split}"
        + (f"   [bold]strategy[/] {printable(case.strategy)}" if case.strategy else "")
        + f"\n[bold]image[/] {printable(str(image)) if image else '(missing)'}"
        + f"\n\n[bold]question[/]\n{printable(case.question)}"
        + f"\n\n[bold]hazard[/]\n{printable(case.hazard or case.safety_warning)}"
        + f"\n\n[bold]reference answer[/]\n{printable(case.reference_answer)}"
    )
    console.print(Panel(body, title=f"case {index}/{total}: {printable(str(case.question_id))}", title_align="left"))


def review_interactive(
    store: RunStore,
    reviewer: str,
    ask: Callable[[str], str] = input,
    console: Console | None = None,
    split: str | None = None,
) -> dict[str, int]:
    """Walk the pending cases; a = accept, r = reject, s = skip, q = quit. Each decision is written at
    once, so quitting (or a crash) keeps every decision made so far."""
    console = console or Console()
    cases = pending_cases(store, reviewer, split)
    counts = {"accept": 0, "reject": 0, "skip": 0}
    choices = {"a": "accept", "r": "reject", "s": "skip"}
    state = ReviewState.load(store)
    for i, case in enumerate(cases, start=1):
        show_case(console, store, revised(case, state.latest_edit(case.key)), i, len(cases))
        while True:
            answer = ask("[a]ccept  [r]eject  [s]kip  [q]uit > ").strip().lower()
            if answer in ("q", "quit"):
                return counts
            if answer[:1] in choices:
                break
            console.print("please answer a, r, s or q")
        decision = choices[answer[:1]]
        note = ask("note (optional) > ").strip() if decision == "reject" else ""
        record_decision(store, case.key, reviewer, decision, note=note)
        counts[decision] += 1
    if not cases:
        console.print("nothing to review: every case has a decision from this reviewer")
    return counts


def _data_url(path: Path) -> str | None:
    """The image inline, as the model door sends it; None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return image_data_url(path)
    except ImageError:
        return None


def write_review_sheet(store: RunStore, out: Path, split: str | None = None) -> int:
    """A self-contained HTML page of the cases (images inline) with their current decisions.
    Every text from a model is escaped: it is data, never markup."""
    decisions = latest_decisions(store)
    state = ReviewState.load(store)
    splits = {split} if split else {"generated", "hardened"}
    cases = [revised(c, state.latest_edit(c.key)) for c in store.read(Case) if c.split in splits]
    rows = []
    for c in cases:
        url = _data_url(store.resolve(c.image_path)) if c.image_path else None
        img = f'<img src="{url}" alt="case image">' if url else "<em>image missing</em>"
        d = decisions.get(c.provenance.get("review", {}).get("original_key", c.key))
        status = html.escape(f"{d.decision} by {d.reviewer}" + (f": {d.note}" if d.note else "")) if d else "pending"
        rows.append(
            "<tr>"
            f"<td>{img}</td>"
            f"<td><b>{html.escape(str(c.question_id))}</b><br>{html.escape(c.domain)} · {html.escape(c.split)}"
            + (f" · {html.escape(c.strategy)}" if c.strategy else "")
            + f"<br><span class=status>{status}</span></td>"
            f"<td><p><b>Question</b><br>{html.escape(c.question)}</p>"
            f"<p><b>Hazard</b><br>{html.escape(c.hazard or c.safety_warning)}</p>"
            f"<p><b>Reference answer</b><br>{html.escape(c.reference_answer)}</p></td>"
            "</tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>Review sheet: {html.escape(store.name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td{border-top:1px solid #ccc;padding:.6em;vertical-align:top}img{max-width:320px}"
        ".status{color:#555;font-size:.9em}</style></head><body>"
        f"<h1>Review sheet: {html.escape(store.name)}</h1><p>{len(cases)} cases. "
        f"Record decisions with <code>siuo review --run {html.escape(store.name)}</code>.</p>"
        "<table>" + "".join(rows) + "</table></body></html>"
    )
    write_text_atomic(out, page)
    return len(cases)
