"""Review in the terminal: a person reads what passed the checks and accepts, rejects or skips each case
(`siuo review --run R`). The web app (`siuo review --run R --serve`) is `generator.review.app`, the
offline HTML sheet `generator.review.sheet`; all three write through `generator.cases`.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.panel import Panel

from generator.cases import ReviewState, pending_cases, record_decision, revised
from generator.records import Case
from generator.store import RunStore
from generator.terminal import printable


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
