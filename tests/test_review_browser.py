"""The review app in a real browser (Debian's chromium driven by Playwright): two reviewers decide by
keyboard, reject with a reason, edit, disagree, read the kappa; reviews.jsonl and an export say exactly
that; a hostile question renders as text and runs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator.testing.browser import chromium_path

try:
    import playwright  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - the test extra and the review extra install both
    pytest.skip(f"browser tests need playwright and the review extra: {exc}", allow_module_level=True)
if chromium_path() is None:  # pragma: no cover - CI installs it (scripts/setup.sh)
    pytest.skip(
        "chromium is not installed (scripts/setup.sh installs it: apt-get install chromium)", allow_module_level=True
    )

from generator.interop.siuo import export_siuo  # noqa: E402
from generator.records import Case, Render, Review  # noqa: E402
from generator.testing.browser import chromium  # noqa: E402
from generator.testing.review_run import XSS_QUESTION, make_review_run, served  # noqa: E402

pytestmark = pytest.mark.browser  # slow too (conftest)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _name_myself(page, name: str) -> None:
    page.click("#switch-reviewer")
    page.fill("#name", name)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.inner_text("#reviewer-name") == name


def _key(page, key: str) -> None:
    """Press a shortcut that leads to another page and wait for it."""
    with page.expect_navigation():
        page.keyboard.press(key)


def _reject(page, digit: str, note: str) -> None:
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.id") == "reason"
    page.keyboard.press(digit)
    page.keyboard.press("Tab")
    page.keyboard.type(note)
    _key(page, "Enter")


def _case_key(page) -> str:
    return page.url.split("/case/")[1].split("?")[0]


def test_two_reviewers_decide_by_keyboard_and_the_run_says_exactly_that(browser, tmp_path: Path):
    store = make_review_run(tmp_path, cases=4)
    c0, c1, c2, c3 = store.read(Case)
    dialogs: list[str] = []
    context = browser.new_context()
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    with served(store) as url:
        page.goto(url + "/")
        assert "4 shown of 4" in page.inner_text("h1")
        _name_myself(page, "ana")

        # ana: n opens the first case she has not reviewed; a accepts it and moves on.
        _key(page, "n")
        assert _case_key(page) == c0.key
        for label in ("a", "r", "e", "j", "k"):
            assert page.locator(f"p.keys kbd:text-is('{label}')").count() == 1, f"key {label} shown"
        assert page.locator("section.checks tr").count() == 1 + 4, "every check with score and explanation"
        assert "Together the image and question 0" in page.inner_text("section.checks")
        _key(page, "a")
        assert _case_key(page) == c1.key, "the next unreviewed case follows"
        assert "strategy: indirect" in page.inner_text("section.texts") and "parent question" in page.inner_text(
            "section.texts"
        )

        # ana rejects the hardened variant with a reason (3 = no hazard) and a note.
        _reject(page, "3", "nothing dangerous here")
        assert _case_key(page) == c2.key

        # ana edits the question (a new revision), then picks the other image candidate (another one).
        page.keyboard.press("e")
        assert page.evaluate("document.activeElement.id") == "edit-question"
        page.keyboard.press("Control+a")
        page.keyboard.type("What view does this place offer?")
        _key(page, "Control+Enter")
        assert page.inner_text("#question") == "What view does this place offer?"
        assert "revision 1" in page.inner_text("h1")
        with page.expect_navigation():
            page.click("form.candidate:not(.current) button")
        assert "revision 2" in page.inner_text("h1")
        assert page.locator("form.candidate.current img").get_attribute("alt") == "candidate 1"

        _key(page, "a")  # ana accepts the case as she revised it

        # The hostile question: shown as text, nothing runs.
        assert _case_key(page) == c3.key
        assert page.inner_text("#question") == XSS_QUESTION
        assert page.locator("img[src='x']").count() == 0
        _key(page, "a")
        assert "Nothing left to review" in page.inner_text("main")

        # bo: disagrees on c0, agrees on c1 and c3, passes c2 by (j: next).
        _name_myself(page, "bo")
        _key(page, "n")
        assert _case_key(page) == c0.key
        _reject(page, "4", "the question gives it away")
        assert _case_key(page) == c1.key
        _reject(page, "3", "")
        assert _case_key(page) == c2.key
        _key(page, "j")
        assert _case_key(page) == c3.key
        _key(page, "a")

        page.goto(url + "/summary")
        assert page.inner_text("#cohen") == "0.400"  # observed 2/3, chance 4/9
        assert page.locator("#disagreements tbody tr").count() == 1
        assert str(c0.question_id) in page.inner_text("#disagreements")
        rows = {r.split("\t")[0]: r.split("\t")[1:] for r in page.inner_text("#per-reviewer tbody").splitlines()}
        assert rows == {"ana": ["3", "1", "0", "2"], "bo": ["1", "2", "0", "0"]}
    context.close()
    assert dialogs == [], "no script from case text ran"

    reviews = [(r.reviewer, r.case_id, r.decision, r.reason, r.note, r.revision) for r in store.iter_records(Review)]
    assert reviews == [
        ("ana", c0.key, "accept", None, "", 0),
        ("ana", c1.key, "reject", "no-hazard", "nothing dangerous here", 0),
        ("ana", c2.key, "edit", None, "", 1),
        ("ana", c2.key, "edit", None, "", 2),
        ("ana", c2.key, "accept", None, "", 2),
        ("ana", c3.key, "accept", None, "", 0),
        ("bo", c0.key, "reject", "text-gives-it-away", "the question gives it away", 0),
        ("bo", c1.key, "reject", "no-hazard", "", 0),
        ("bo", c3.key, "accept", None, "", 0),
    ]
    edits = [r for r in store.iter_records(Review) if r.decision == "edit"]
    other = [r for r in store.read(Render) if r.scenario_id == c2.scenario_id and r.candidate == 1][0]
    assert edits[0].question == edits[1].question == "What view does this place offer?"
    assert (edits[0].image_path, edits[1].image_path, edits[1].render_key) == (c2.image_path, other.path, other.key)

    export_siuo(store, tmp_path / "export")
    items = json.loads((tmp_path / "export" / "siuo_gen.json").read_text())
    assert [(i["question_id"], i["question"], i.get("revision")) for i in items] == [
        (c2.question_id, "What view does this place offer?", 2),
        (c3.question_id, XSS_QUESTION, None),
    ], "c0 (rejected by bo) and c1 (rejected by both) are left out; c2 in its latest revision"
    assert items[0]["image"] == Path(other.path).name


def test_a_save_from_a_page_older_than_a_colleagues_edit_shows_both_texts_and_keeps_what_was_typed(
    browser, tmp_path: Path
):
    """ana and bo have the same case open; ana saves an edit; bo's save from his older page gets the conflict
    page: ana's text as it is now beside bo's, in a form that records his (knowingly) over hers."""
    store = make_review_run(tmp_path, cases=1, hostile_question=False)
    (case,) = store.read(Case)
    ana_context, bo_context = browser.new_context(), browser.new_context()
    ana, bo = ana_context.new_page(), bo_context.new_page()
    with served(store) as url:
        for page, name in ((ana, "ana"), (bo, "bo")):
            page.goto(f"{url}/case/{case.key}")
            _name_myself(page, name)
        for page, text in ((ana, "Ana's question"), (bo, "Bo's question")):
            page.keyboard.press("e")
            page.keyboard.press("Control+a")
            page.keyboard.type(text)
        _key(ana, "Control+Enter")
        assert ana.inner_text("#question") == "Ana's question"

        _key(bo, "Control+Enter")
        assert "Not saved" in bo.inner_text("h1")
        assert bo.inner_text("#question") == "Ana's question", "the text as it is now"
        assert bo.input_value("#edit-question") == "Bo's question", "what bo typed is kept"
        _key(bo, "Control+Enter")
        assert bo.inner_text("#question") == "Bo's question" and "revision 2" in bo.inner_text("h1")
    ana_context.close()
    bo_context.close()
    assert [(r.reviewer, r.revision, r.question) for r in store.iter_records(Review)] == [
        ("ana", 1, "Ana's question"),
        ("bo", 2, "Bo's question"),
    ]
