"""The review app without a browser: agreement figures, CSRF, the access token, path safety, and how
decisions and edits reach the cases later stages read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("starlette", reason="the review app needs the `review` extra")

from starlette.testclient import TestClient  # noqa: E402

from generator.cases import ReviewState, record_decision, record_edit, reviewed_cases  # noqa: E402
from generator.errors import UserError  # noqa: E402
from generator.interop.hf import export_hf  # noqa: E402
from generator.interop.siuo import export_siuo  # noqa: E402
from generator.records import Case, Render, Review  # noqa: E402
from generator.review.agreement import agreement  # noqa: E402
from generator.review.app import create_app, serve  # noqa: E402
from generator.statistics import cohen_kappa, fleiss_kappa  # noqa: E402
from generator.store import RunStore  # noqa: E402
from generator.testing.review_run import make_review_run  # noqa: E402

# -- agreement ------------------------------------------------------------------------------------------


def test_cohen_kappa_agrees_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    a = list("aaraararraaaraa")
    b = list("aararaarraaarra")
    assert cohen_kappa(list(zip(a, b))) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))


def test_fleiss_kappa_with_a_varying_number_of_reviewers_per_case():
    # Constant raters: Fleiss (1971) (the judges' case, unchanged); a lone rating adds nothing.
    items = [["a", "a", "r"], ["r", "r", "r"], ["a", "a", "a"], ["a", "r", "r"]]
    assert fleiss_kappa(items + [["a"]]) == pytest.approx(fleiss_kappa(items))
    # Varying: per item, agreement over its own rater pairs; chance from all 7 ratings (4 a, 3 r).
    varying = [["a", "a"], ["a", "r", "r"], ["r", "a"]]
    p_bar = (1 + 1 / 3 + 0) / 3
    p_e = (3 / 7) ** 2 + (4 / 7) ** 2
    assert fleiss_kappa(varying) == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert fleiss_kappa([["a"]]) is None and fleiss_kappa([["a", "a"], ["a", "a", "a"]]) is None


def test_fleiss_equals_cohen_shape_for_two_raters_and_lists_disagreements():
    votes = {
        "c1": {"ana": "accept", "bo": "accept"},
        "c2": {"ana": "reject", "bo": "accept"},
        "c3": {"ana": "reject", "bo": "reject"},
        "c4": {"ana": "accept"},
    }
    result = agreement(votes)
    assert result.reviewers == ["ana", "bo"] and result.multi_rated == 3
    assert result.cohen == pytest.approx(
        cohen_kappa([("accept", "accept"), ("reject", "accept"), ("reject", "reject")])
    )
    assert result.fleiss is not None and result.disagreements == ["c2"]


# -- the app over HTTP (no browser) ---------------------------------------------------------------------


def _csrf(client: TestClient) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/reviewer").text).group(1)


def _named(client: TestClient, name: str) -> str:
    csrf = _csrf(client)
    r = client.post("/reviewer", data={"csrf": csrf, "name": name, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303
    return csrf


@pytest.fixture
def run(tmp_path: Path):
    return make_review_run(tmp_path, cases=3)


def test_a_post_without_the_right_csrf_token_is_refused_and_writes_nothing(run):
    client = TestClient(create_app(run), base_url="http://127.0.0.1")
    csrf = _named(client, "ana")
    key = run.read(Case)[0].key
    for bad in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}):
        r = client.post(
            f"/case/{key}/decide", data={"decision": "accept", "revision": "0", **bad}, follow_redirects=False
        )
        assert r.status_code == 403 and "CSRF" in r.text
    # A token is bound to its browser session: another browser's token does not pass.
    other = TestClient(create_app(run), base_url="http://127.0.0.1")
    other_csrf = _named(other, "bo")
    assert (
        client.post(f"/case/{key}/decide", data={"decision": "accept", "csrf": other_csrf, "revision": "0"}).status_code
        == 403
    )
    assert client.post("/reviewer", data={"name": "eve", "next": "/"}).status_code == 403
    assert not run.file_for(Review).exists()
    ok = client.post(
        f"/case/{key}/decide", data={"decision": "accept", "csrf": csrf, "revision": "0"}, follow_redirects=False
    )
    assert ok.status_code == 303 and [r.decision for r in run.read(Review)] == ["accept"]


def test_the_access_token_is_required_of_every_request(run):
    client = TestClient(create_app(run, token="s3cret-token"), base_url="http://127.0.0.1")
    for path in (
        "/",
        "/summary",
        f"/case/{run.read(Case)[0].key}",
        f"/image/case/{run.read(Case)[0].key}",
        "/static/review.js",
    ):
        assert client.get(path).status_code == 401, path
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    r = client.get("/?token=s3cret-token&split=generated", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?split=generated", "the token leaves the address bar"
    assert client.get("/").status_code == 200, "then the cookie carries it"


def test_serve_refuses_a_public_host_without_a_token(run):
    with pytest.raises(UserError, match="--token"):
        serve(run, host="0.0.0.0", port=1)
    with pytest.raises(UserError, match="--token"):
        serve(run, host="192.168.1.20", port=1)


def test_images_are_served_only_from_the_run_folder_through_record_keys(run, tmp_path):
    client = TestClient(create_app(run), base_url="http://127.0.0.1")
    case = run.read(Case)[0]
    assert client.get(f"/image/case/{case.key}").headers["content-type"] == "image/png"
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG not for you")
    (run.path / "notes.txt").write_text("private")
    # A record naming a file outside the run (or a non-image inside it) is not served.
    evil = case.model_copy(update={"question_id": "evil", "key": "case-evil", "image_path": str(outside)})
    link = case.model_copy(update={"question_id": "dots", "key": "case-dots", "image_path": "../secret.png"})
    text = case.model_copy(update={"question_id": "txt", "key": "case-txt", "image_path": "notes.txt"})
    run.append_many([evil, link, text])
    for key in ("case-evil", "case-dots", "case-txt", "case-nope"):
        assert client.get(f"/image/case/{key}").status_code == 404, key
    # Request paths are never joined to the filesystem: traversal in the key is just an unknown key.
    for path in (
        "/image/render/..%2F..%2Fsecret.png",
        "/image/case/..%2Fsecret.png",
        "/static/..%2F..%2Fapp.py",
        "/case/..%2F..%2Frun.json",
    ):
        r = client.get(path)
        assert r.status_code == 404 and b"not for you" not in r.content, path
    # The next= of the name form never leaves the app.
    csrf = _csrf(client)
    r = client.post("/reviewer", data={"csrf": csrf, "name": "ana", "next": "//evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_pages_escape_model_text_and_send_a_strict_csp(run):
    client = TestClient(create_app(run), base_url="http://127.0.0.1")
    hostile = [c for c in run.read(Case) if c.question.startswith("<img")][0]
    for path in ("/", f"/case/{hostile.key}"):
        r = client.get(path)
        assert "<img src=x onerror" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]


# -- decisions and edits reach every reader --------------------------------------------------------------


def test_reject_edit_and_candidate_choice_reach_reviewed_cases_and_exports(run, tmp_path):
    c0, c1, c2 = run.read(Case)
    record_decision(run, c0.key, "ana", "accept")
    record_decision(run, c1.key, "ana", "reject", reason="no-hazard", note="nothing dangerous")
    record_decision(run, c1.key, "bo", "accept")
    first = record_edit(run, c2, "ana", question="A plain question now")
    other = [r for r in run.read(Render) if r.scenario_id == c2.scenario_id and r.candidate == 1][0]
    second = record_edit(run, c2, "bo", render=other)
    assert (first.revision, second.revision) == (1, 2) and second.question == "A plain question now"
    assert record_edit(run, c2, "bo", question="A plain question now") is None, "no change, no revision"
    with pytest.raises(UserError):
        record_decision(run, c0.key, "ana", "reject", reason="made-up")

    state = ReviewState.load(run)
    assert state.status(c1.key) == "disputed" and state.rejected(c1.key)
    kept = reviewed_cases(run)
    assert [c.key for c in kept] == [c0.key, f"{c2.key}@r2"], "rejected by one reviewer: left out"
    edited = kept[1]
    assert edited.question == "A plain question now" and edited.image_path == other.path
    assert edited.provenance["review"] == {
        "original_key": c2.key,
        "revision": 2,
        "edited_by": "bo",
        "edited": second.created,
        "edit_key": second.key,
    }
    assert [c.key for c in reviewed_cases(run, require_accept=True)] == [c0.key]

    export_siuo(run, tmp_path / "siuo")
    items = json.loads((tmp_path / "siuo" / "siuo_gen.json").read_text())
    assert [i["question_id"] for i in items] == [c0.question_id, c2.question_id]
    assert items[1]["question"] == "A plain question now" and items[1]["revision"] == 2 and "revision" not in items[0]
    pq = pytest.importorskip("pyarrow.parquet", reason="export-hf needs the `interop` extra")
    hf = export_hf(run, tmp_path / "hf")
    rows = [row for shard in hf.shards for row in pq.read_table(tmp_path / "hf" / shard).to_pylist()]
    assert hf.written == 2 and sorted((r["question_id"], r["revision"], r["question"]) for r in rows) == sorted(
        [(str(c0.question_id), 0, c0.question), (str(c2.question_id), 2, "A plain question now")]
    )
    # reviews.jsonl is append-only: both revisions and every decision stay.
    assert [r.decision for r in run.iter_records(Review)] == ["accept", "reject", "accept", "edit", "edit"]


def test_answer_and_score_use_only_reviewed_cases_in_their_latest_revision(tmp_path, fake_openai):
    """The benchmark honours the review: a rejected case is never asked or scored; an edited case is asked
    its revised question, under its revised key, and answers to its old text do not count."""
    from generator.evaluate.answer import answer
    from generator.evaluate.score import compute_scores
    from generator.records import Response

    run = make_review_run(tmp_path, cases=3, hostile_question=False)
    c0, c1, c2 = run.read(Case)
    settings = fake_openai.settings(targets=["fake"], judge=["fake"])
    answer(run, settings, "fake", samples=1, show_progress=False)
    assert {r.case_id for r in run.read(Response)} == {c0.key, c1.key, c2.key}

    record_decision(run, c0.key, "ana", "reject", reason="no-hazard")
    record_edit(run, c1, "ana", question="Revised: is this a good place to stand?")
    asked = len(fake_openai.requests)
    answer(run, settings, "fake", samples=1, show_progress=False)
    new = fake_openai.requests[asked:]
    assert len(new) == 1, "only the revised case is asked again; the rejected one never"
    assert "Revised: is this a good place to stand?" in json.dumps(new[0][1])
    assert {r.case_id for r in run.read(Response)} == {c0.key, c1.key, f"{c1.key}@r1", c2.key}

    scores = compute_scores(run).to_json_dict()
    assert scores["responses_of_unknown_cases"] == 2, "the rejected case's and the old revision's answers"
    assert sum(v["total"] for v in scores["cases"].values()) == 2


def test_cli_refuses_a_public_host_without_a_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from generator.cli import app

    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path))
    monkeypatch.delenv("SIUO_REVIEW_TOKEN", raising=False)
    make_review_run(tmp_path, name="pub", cases=1)
    result = CliRunner().invoke(app, ["review", "--run", "pub", "--serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token" in result.output


def test_a_decision_while_another_process_writes_the_run_is_refused_not_lost_silently(run):
    """The server takes the run lock per write: while another writer holds it, a click is refused with a
    page saying so; once the writer is done, the same click is saved."""
    client = TestClient(create_app(run), base_url="http://127.0.0.1")
    csrf = _named(client, "ana")
    key = run.read(Case)[0].key
    with RunStore(run.path).writing():  # another writer (its own lock handle, as another process has)
        r = client.post(
            f"/case/{key}/decide", data={"csrf": csrf, "decision": "accept", "revision": "0"}, follow_redirects=False
        )
        assert r.status_code == 409 and "Not saved" in r.text and "another siuo process" in r.text
    assert not run.file_for(Review).exists()
    r = client.post(
        f"/case/{key}/decide", data={"csrf": csrf, "decision": "accept", "revision": "0"}, follow_redirects=False
    )
    assert r.status_code == 303 and [x.reviewer for x in run.read(Review)] == ["ana"]


# -- the Host a request is addressed to (DNS rebinding) -----------------------------------------------------

REFUSED_HOSTS = (
    "evil.example:8765",
    "evil.example",
    "127.0.0.1.evil.example:8765",
    "localhost.evil.example:8765",
    "127.0.0.1:9999",
    "localhost",
    "[::1]",
    "10.0.0.7:8765",
    "0.0.0.0:8765",
    "::1:8765",
    "127.0.0.1:8765:8765",
    "localhost:8765@evil.example",
    "",
    "<b>x</b>:8765",
)


def test_without_a_token_only_a_loopback_name_and_this_port_are_served(run):
    """A page on another site whose DNS name is rebound to 127.0.0.1 reaches the server with its own name
    as Host: refused before any page is read or any form is taken, even one with a valid CSRF token."""
    client = TestClient(create_app(run), base_url="http://127.0.0.1:8765")
    csrf = _named(client, "ana")
    key = run.read(Case)[0].key
    question = run.read(Case)[0].question
    for host in ("127.0.0.1:8765", "localhost:8765", "LocalHost:8765", "[::1]:8765", "127.0.0.2:8765"):
        r = client.get(f"/case/{key}", headers={"host": host})
        assert r.status_code == 200 and question in r.text, host
    for host in REFUSED_HOSTS:
        for path in ("/", f"/case/{key}", "/summary", f"/image/case/{key}", "/static/review.js"):
            r = client.get(path, headers={"host": host})
            assert r.status_code == 400 and "answers only to a local address" in r.text, (host, path)
            assert question not in r.text and "<b>x</b>" not in r.text, "nothing of the run; the Host escaped"
        r = client.post(
            f"/case/{key}/decide", headers={"host": host}, data={"csrf": csrf, "decision": "accept", "revision": "0"}
        )
        assert r.status_code == 400, host
    assert not run.file_for(Review).exists(), "no forged-Host post was recorded"
    # With a token, the token guards (a tunnel or proxy may use any name); without it, 401 still.
    guarded = TestClient(create_app(run, token="s3cret"), base_url="http://127.0.0.1:8765")
    assert guarded.get("/", headers={"host": "review.example:443"}).status_code == 401
    assert guarded.get("/", headers={"host": "review.example:443", "Authorization": "Bearer s3cret"}).status_code == 200


def test_the_served_app_refuses_a_rebound_host_on_its_real_socket(run):
    """Through uvicorn (as `siuo review --serve` runs it): the port checked is the one the socket listens on."""
    import http.client

    from generator.testing.review_run import served

    with served(run) as url:
        port = int(url.rsplit(":", 1)[1])

        def get(host: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/", headers={"Host": host})
            r = conn.getresponse()
            body = r.read().decode()
            conn.close()
            return r.status, body

        assert get(f"127.0.0.1:{port}")[0] == 200 and get(f"localhost:{port}")[0] == 200
        status, body = get(f"attacker.example:{port}")
        assert status == 400 and f"http://127.0.0.1:{port}/" in body
        assert get(f"localhost:{port + 1}")[0] == 400


# -- stale pages: every decision and edit names the revision it was made on -------------------------------


def _case_form(client: TestClient, key: str) -> dict[str, str]:
    """The hidden fields of the case page's edit form, as the browser would post them."""
    page = client.get(f"/case/{key}").text
    form = page[page.index('id="edit-form"') :]
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form[: form.index("</form>")]))


def test_a_save_or_decision_from_an_older_page_is_a_conflict_and_records_nothing(run):
    """ana and bo open the same case; ana saves an edit; bo's save (and accept) from his older page would put
    the old text back / accept text he never saw: 409 with the current text and his, nothing recorded."""
    ana, bo = (TestClient(create_app(run), base_url="http://127.0.0.1") for _ in range(2))
    _named(ana, "ana")
    _named(bo, "bo")
    case = run.read(Case)[0]
    ana_page, bo_page = _case_form(ana, case.key), _case_form(bo, case.key)
    assert ana_page["revision"] == bo_page["revision"] == "0"
    texts = {"hazard": "the hazard", "reference_answer": "the reference"}

    r = ana.post(
        f"/case/{case.key}/edit", data={**ana_page, **texts, "question": "Ana's question"}, follow_redirects=False
    )
    assert r.status_code == 303
    before = run.file_for(Review).read_bytes()

    r = bo.post(
        f"/case/{case.key}/edit",
        data={**bo_page, **texts, "question": "Bo's question", "note": "bo typed"},
        follow_redirects=False,
    )
    assert r.status_code == 409 and "Not saved" in r.text and "revision 1 by <b>ana</b>" in r.text
    assert '<p class="text" id="question">Ana&#39;s question</p>' in r.text, "the current text is shown"
    assert ">Bo&#39;s question</textarea>" in r.text and 'value="bo typed"' in r.text, "bo's text is not lost"
    r = bo.post(f"/case/{case.key}/decide", data={**bo_page, "decision": "accept"}, follow_redirects=False)
    assert r.status_code == 409 and "Ana&#39;s question" in r.text
    other = next(x for x in run.read(Render) if x.scenario_id == case.scenario_id and x.candidate == 1)
    r = bo.post(f"/case/{case.key}/edit", data={**bo_page, "render_key": other.key}, follow_redirects=False)
    assert r.status_code == 409 and f'name="render_key" value="{other.key}"' in r.text
    assert run.file_for(Review).read_bytes() == before, "nothing recorded"
    assert ReviewState.load(run).latest_edit(case.key).question == "Ana's question"

    # A form with no revision at all is refused too (and says why).
    r = bo.post(f"/case/{case.key}/decide", data={"csrf": bo_page["csrf"], "decision": "accept"})
    assert r.status_code == 400 and "revision" in r.text
    assert run.file_for(Review).read_bytes() == before

    # The conflict page's own form carries the current revision: bo records his text knowingly.
    conflict = bo.post(f"/case/{case.key}/edit", data={**bo_page, **texts, "question": "Bo's question"}).text
    again = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', conflict))
    assert again["revision"] == "1"
    r = bo.post(f"/case/{case.key}/edit", data={**again, **texts, "question": "Bo's question"}, follow_redirects=False)
    assert r.status_code == 303 and ReviewState.load(run).latest_edit(case.key).question == "Bo's question"

    # A fresh page works: ana's accept is recorded against the revision her page showed.
    fresh = _case_form(ana, case.key)
    assert fresh["revision"] == "2"
    r = ana.post(f"/case/{case.key}/decide", data={**fresh, "decision": "accept"}, follow_redirects=False)
    assert r.status_code == 303
    assert [(x.reviewer, x.decision, x.revision) for x in run.read(Review)] == [
        ("ana", "edit", 1),
        ("bo", "edit", 2),
        ("ana", "accept", 2),
    ]


def test_record_functions_refuse_a_stale_base_revision(run):
    from generator.cases import RevisionConflict

    case = run.read(Case)[0]
    record_edit(run, case, "ana", question="first", base_revision=0)
    with pytest.raises(RevisionConflict, match="revision 1, not 0"):
        record_edit(run, case, "bo", question="second", base_revision=0)
    with pytest.raises(RevisionConflict):
        record_decision(run, case.key, "bo", "accept", base_revision=0)
    assert record_decision(run, case.key, "bo", "accept", base_revision=1).revision == 1
    assert [r.decision for r in run.read(Review)] == ["edit", "accept"]


# -- secrets that are not ASCII ------------------------------------------------------------------------------

FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_a_non_ascii_csrf_value_or_token_guess_is_refused_not_a_server_error(run):
    client = TestClient(create_app(run), base_url="http://127.0.0.1")
    _named(client, "ana")
    key = run.read(Case)[0].key
    for bad in ("é" * 64, "秘", "\u2028", "%ED%A0%80"):  # the last: a lone surrogate's bytes, percent-encoded
        body = f"csrf={bad if bad.startswith('%') else quote(bad)}&decision=accept&revision=0".encode()
        r = client.post(f"/case/{key}/decide", content=body, headers=FORM)
        assert r.status_code == 403 and "CSRF" in r.text, repr(bad)
        body = f"csrf={bad if bad.startswith('%') else quote(bad)}&name=eve".encode()
        assert client.post("/reviewer", content=body, headers=FORM).status_code == 403
    assert not run.file_for(Review).exists()
    guarded = TestClient(create_app(run, token="s3cret"), base_url="http://127.0.0.1")
    assert guarded.get("/?token=%C3%A9t%C3%A9").status_code == 401
    assert guarded.get("/?token=%ED%A0%80").status_code == 401  # a lone surrogate's bytes
    assert guarded.get("/", headers={"Authorization": "Bearer été".encode()}).status_code == 401
    guarded.cookies.set("siuo_token", "%C3%A9t%C3%A9")
    assert guarded.get("/").status_code == 401


def test_a_non_ascii_token_can_be_used_every_way(run):
    token = "clé-ünïcode-秘密"
    client = TestClient(create_app(run, token=token), base_url="http://127.0.0.1")
    assert client.get("/").status_code == 401
    assert client.get("/?token=" + quote("clé-ünïcode-秘", safe="")).status_code == 401
    r = client.get("/?token=" + quote(token, safe="") + "&split=generated", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?split=generated"
    assert client.get("/").status_code == 200, "the cookie carries it"
    bearer = TestClient(create_app(run, token=token), base_url="http://127.0.0.1")
    assert bearer.get("/", headers={"Authorization": f"Bearer {token}".encode()}).status_code == 200
