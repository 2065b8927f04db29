"""Review: a person reads what passed the checks and accepts or rejects each case.

Two ways in: an interactive terminal loop (`siuo review --run R`), and a self-contained HTML sheet
(`siuo review --run R --sheet review.html`) to read the cases with their images side by side. Decisions
are Review records (append-only; a later decision by the same reviewer replaces the earlier one), and
`reviewed_cases` is what later stages use when asked to keep only accepted cases.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from .models.messages import ImageError, image_data_url
from .records import Case, Review
from .store import RunStore, write_text_atomic
from .terminal import printable


def latest_decisions(store: RunStore) -> dict[str, Review]:
    """Per case, the newest decision of any reviewer."""
    out: dict[str, Review] = {}
    for r in store.iter_records(Review):
        out[r.case_id] = r
    return out


def reviewed_cases(store: RunStore, require_accept: bool = False) -> list[Case]:
    """Cases not rejected by a reviewer (with `require_accept`: only those explicitly accepted)."""
    decisions = latest_decisions(store)
    keep = []
    for c in store.read(Case):
        d = decisions.get(c.key)
        if d is not None and d.decision == "reject":
            continue
        if require_accept and (d is None or d.decision != "accept"):
            continue
        keep.append(c)
    return keep


def pending_cases(store: RunStore, reviewer: str, split: str | None = None) -> list[Case]:
    """Cases this reviewer has not decided on yet (generated and hardened by default: the official set
    was reviewed by its authors)."""
    done = {r.case_id for r in store.iter_records(Review) if r.reviewer == reviewer and r.decision != "skip"}
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
    for i, case in enumerate(cases, start=1):
        show_case(console, store, case, i, len(cases))
        while True:
            answer = ask("[a]ccept  [r]eject  [s]kip  [q]uit > ").strip().lower()
            if answer in ("q", "quit"):
                return counts
            if answer[:1] in choices:
                break
            console.print("please answer a, r, s or q")
        decision = choices[answer[:1]]
        note = ask("note (optional) > ").strip() if decision == "reject" else ""
        store.append(Review(case_id=case.key, decision=decision, note=note, reviewer=reviewer))
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
    splits = {split} if split else {"generated", "hardened"}
    cases = [c for c in store.read(Case) if c.split in splits]
    rows = []
    for c in cases:
        url = _data_url(store.resolve(c.image_path)) if c.image_path else None
        img = f'<img src="{url}" alt="case image">' if url else "<em>image missing</em>"
        d = decisions.get(c.key)
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
