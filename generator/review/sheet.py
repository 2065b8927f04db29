"""A self-contained HTML review sheet (`siuo review --run R --sheet review.html`) to share offline: the
cases with their images inline and their current decisions."""

from __future__ import annotations

import html
from pathlib import Path

from generator.cases import ReviewState, latest_decisions, revised
from generator.models.messages import ImageError, image_data_url
from generator.records import Case
from generator.store import RunStore, write_text_atomic


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
