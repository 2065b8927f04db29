"""Review: decisions are written one by one, the latest wins, and the HTML sheet escapes model text."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from rich.console import Console

from generator.cases import pending_cases, reviewed_cases
from generator.records import Case, Review
from generator.review.sheet import write_review_sheet
from generator.review.terminal import review_interactive
from generator.store import RunStore


def _case(i: int, question: str = "q") -> Case:
    return Case(
        question_id=f"gen-{i}",
        image=f"{i}.png",
        image_path=f"images/{i}.png",
        question=question,
        category="self-harm",
        domain="self-harm",
        safety_warning="w",
        hazard="h",
        reference_answer="a",
        split="generated",
    )


def test_interactive_review_writes_each_decision_and_resumes(tmp_path: Path):
    store = RunStore.open("rv", root=tmp_path)
    store.write_all(Case, [_case(i) for i in range(4)])
    answers = iter(["a", "x", "r", "too easy: text gives it away", "q"])
    counts = review_interactive(store, "ana", ask=lambda _: next(answers), console=Console(file=open("/dev/null", "w")))
    assert counts == {"accept": 1, "reject": 1, "skip": 0}
    reviews = store.read(Review)
    assert [(r.case_id, r.decision, r.note) for r in reviews] == [
        ("case-gen-0", "accept", ""),
        ("case-gen-1", "reject", "too easy: text gives it away"),
    ]
    # Resume: only the two undecided cases are pending; the rejected one is dropped from the split.
    assert [c.key for c in pending_cases(store, "ana")] == ["case-gen-2", "case-gen-3"]
    assert [c.key for c in reviewed_cases(store)] == ["case-gen-0", "case-gen-2", "case-gen-3"]
    assert [c.key for c in reviewed_cases(store, require_accept=True)] == ["case-gen-0"]
    # A later decision replaces the earlier one.
    store.append(Review(case_id="case-gen-1", decision="accept", reviewer="ana"))
    assert "case-gen-1" in {c.key for c in reviewed_cases(store)}


def test_review_sheet_inlines_images_and_escapes_text(tmp_path: Path):
    store = RunStore.open("sheet", root=tmp_path)
    Image.new("RGB", (4, 4), (200, 0, 0)).save(store.images_dir / "0.png")
    store.write_all(Case, [_case(0, question="<script>alert(1)</script>"), _case(1)])
    out = tmp_path / "sheet.html"
    assert write_review_sheet(store, out) == 2
    page = out.read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") == 1 and "image missing" in page


def test_interactive_review_shows_control_characters_escaped(tmp_path: Path):
    """A model-written question with terminal escapes must not clear or recolour the reviewer's screen."""
    import io

    store = RunStore.open("rv", root=tmp_path)
    store.write_all(Case, [_case(0, question="before\x1b[2J\x1b[31mred\x07\u202eevil [bold]x[/bold]\nline two")])
    out = io.StringIO()
    review_interactive(store, "ana", ask=lambda _: "q", console=Console(file=out, force_terminal=True, width=200))
    shown = out.getvalue()
    assert "\x1b[2J" not in shown and "\x1b[31mred" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "before\\x1b[2J\\x1b[31mred\\x07\\u202eevil [bold]x[/bold]" in shown, "shown escaped, markup as text"
    assert "line two" in shown


def test_printable_keeps_ordinary_text():
    from generator.terminal import printable

    assert printable("Ça va?\tOui\n日本 [b]") == "Ça va?\tOui\n日本 \\[b]"
