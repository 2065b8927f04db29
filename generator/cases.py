"""Which cases count: the review state every stage reads cases through.

Decisions and edits are Review records in reviews.jsonl (append-only; a later decision by the same
reviewer replaces their earlier one; an edit is a new revision). Every later stage reads cases through
`reviewed_cases`: a rejected case is never exported or evaluated, an edited one is used in its latest
revision. It lives in the core, beside the store, because every stage from accept to the exports reads it;
the review UIs that write it are in `generator.review`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from generator.errors import UserError
from generator.records import Case, Decision, Render, Review
from generator.store import RunStore

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
        super().__init__(
            f"case {case_key} is at revision {current}, not {base} as when this decision was made: nothing recorded"
        )
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
    def load(cls, store: RunStore) -> ReviewState:
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
    return case.model_copy(
        update={
            "key": f"{case.key}{REVISION_MARK}{edit.revision}",
            "question": question,
            "hazard": hazard,
            "safety_warning": hazard,
            "reference_answer": reference,
            "options": options,
            "image_path": image_path,
            "image": Path(image_path).name if image_path else case.image,
            "provenance": {
                **case.provenance,
                "review": {
                    "original_key": case.key,
                    "revision": edit.revision,
                    "edited_by": edit.reviewer,
                    "edited": edit.created,
                    "edit_key": edit.key,
                },
            },
        }
    )


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


def record_decision(
    store: RunStore,
    case_key: str,
    reviewer: str,
    decision: str,
    reason: str | None = None,
    note: str = "",
    base_revision: int | None = None,
) -> Review:
    """Append a decision; the caller holds the run lock (`RunStore.writing`). With `base_revision` (the
    revision the reviewer was shown), a case revised since raises RevisionConflict and records nothing."""
    if decision not in DECISIONS:
        raise UserError(f"unknown decision {decision!r} (use {', '.join(DECISIONS)})")
    if decision == "reject" and reason is not None and reason not in REJECT_REASONS:
        raise UserError(f"unknown reject reason {reason!r} (use {', '.join(REJECT_REASONS)})")
    state = ReviewState.load(store)
    _check_base(state, case_key, base_revision)
    review = Review(
        case_id=case_key,
        decision=cast(Decision, decision),  # checked against DECISIONS above
        reviewer=reviewer,
        note=note,
        reason=reason if decision == "reject" else None,
        revision=state.revision(case_key),
    )
    store.append(review)
    return review


def record_edit(
    store: RunStore,
    case: Case,
    reviewer: str,
    question: str | None = None,
    hazard: str | None = None,
    reference_answer: str | None = None,
    render: Render | None = None,
    note: str = "",
    base_revision: int | None = None,
) -> Review | None:
    """Append a new revision of `case` (the whole revised text and image); None when nothing changed.
    The caller holds the run lock, so two reviewers never write the same revision number. With
    `base_revision` (the revision the edited text started from), a case revised since raises
    RevisionConflict: the edit would silently undo the other reviewer's."""
    state = ReviewState.load(store)
    _check_base(state, case.key, base_revision)
    current = revised(case, state.latest_edit(case.key))
    last = state.latest_edit(case.key)
    new: dict[str, Any] = {
        "question": current.question if question is None else question,
        "hazard": current.hazard if hazard is None else hazard,
        "reference_answer": current.reference_answer if reference_answer is None else reference_answer,
        "image_path": render.path if render is not None else current.image_path,
    }
    old = {
        "question": current.question,
        "hazard": current.hazard,
        "reference_answer": current.reference_answer,
        "image_path": current.image_path,
    }
    if new == old:
        return None
    review = Review(
        case_id=case.key,
        decision="edit",
        reviewer=reviewer,
        note=note,
        revision=state.revision(case.key) + 1,
        **new,
        render_key=render.key if render is not None else (last.render_key if last else None),
    )
    store.append(review)
    return review


def pending_cases(store: RunStore, reviewer: str, split: str | None = None) -> list[Case]:
    """Cases this reviewer has not decided on yet (generated and hardened by default: the official set
    was reviewed by its authors)."""
    done = {
        r.case_id for r in store.iter_records(Review) if r.reviewer == reviewer and r.decision in ("accept", "reject")
    }
    splits = {split} if split else {"generated", "hardened"}
    return [c for c in store.read(Case) if c.split in splits and c.key not in done]
