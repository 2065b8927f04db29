"""Text from outside at the boundary: lone surrogates never crash a stage, hostile answer files are one-line
errors, escape sequences never reach a terminal, a log or report.md raw, and a stage that skipped work
says so in its exit code (issue 20, items 2, 10, 11 and 13)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from generator.cli import EXIT_FAILED_RECORDS, _scrubbing, app
from generator.evaluate.answer import answer
from generator.evaluate.score import score, score_tables
from generator.interop.responses_in import import_responses
from generator.interop.siuo import read_official, write_import
from generator.models.cache import RequestCache
from generator.models.structured import parse_structured
from generator.records import Case, Response
from generator.store import RunStore
from generator.terminal import PrintableLogs, printable, shown
from generator.testing.fake_openai import Fault, tiny_png
from generator.untrusted import loads_untrusted, valid_unicode

LONE = "\ud800"
ESC_RESET = "\x1bc"


def _case(qid: str, image: str | None = "a.png", **kw) -> Case:
    return Case(
        question_id=qid,
        image=image or "none.png",
        image_path=f"images/{image}" if image else None,
        image_missing=image is None,
        question=f"What next, {qid}?",
        category="self-harm",
        domain="self-harm",
        safety_warning="w",
        hazard="h",
        reference_answer="r",
        split="generated",
        **kw,
    )


def _run(tmp_path, name: str = "b", cases: list[Case] | None = None) -> RunStore:
    store = RunStore.open(name, root=tmp_path / "outputs")
    Image.new("RGB", (8, 6), (10, 20, 30)).save(store.images_dir / "a.png")
    store.write_all(Case, cases or [_case("q1")])
    return store


def _config(tmp_path, settings) -> str:
    import tomli_w

    path = tmp_path / "siuo.toml"
    path.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    return str(path)


# ----------------------------------------------------------------------------------------------------
# Item 2: a lone surrogate from outside is replaced at the boundary, counted, never a crash
# ----------------------------------------------------------------------------------------------------


def test_valid_unicode_replaces_lone_surrogates_and_keeps_pairs():
    assert valid_unicode(f"a{LONE}b") == ("a\ufffdb", 1)
    assert valid_unicode("\ud83d\ude00") == ("\U0001f600", 0)  # a pair held as two code points is the character
    assert valid_unicode("plain \ufffd") == ("plain \ufffd", 0)  # an honest U+FFFD is not counted
    assert loads_untrusted('{"k\\udc00": ["\\ud800", "\\ud83d\\ude00"]}') == ({"k\ufffd": ["\ufffd", "\U0001f600"]}, 2)


def test_a_lone_surrogate_reply_is_recorded_and_a_rerun_is_served_from_the_cache(tmp_path, fake_openai, caplog):
    fake_openai.on_chat(lambda body: f"I would not{LONE} do that")
    settings = fake_openai.settings()
    store = _run(tmp_path)
    with caplog.at_level(logging.WARNING):
        [report] = answer(store, settings, "targets", samples=2, show_progress=False)
    assert report.requested == 2 and report.failed == 0
    texts = [r.text for r in store.read(Response)]
    assert texts == ["I would not\ufffd do that"] * 2
    assert "the reply held 2 invalid Unicode character(s)" in caplog.text  # recorded: one reply of n=2 choices
    asked = fake_openai.hits

    again = _run(tmp_path, "b2")  # the same cases in a new run: every reply comes from the request cache
    [report] = answer(again, settings, "targets", samples=2, show_progress=False)
    assert fake_openai.hits == asked and report.requested == 2 and report.failed == 0
    assert [r.text for r in again.read(Response)] == texts


def test_a_lone_surrogate_reply_is_recorded_without_a_cache(tmp_path, fake_openai):
    fake_openai.push(LONE)
    store = _run(tmp_path)
    [report] = answer(store, fake_openai.settings(cache=False), "targets", samples=1, show_progress=False)
    assert report.failed == 0 and [r.text for r in store.read(Response)] == ["\ufffd"]


def test_the_cache_stores_and_serves_text_with_a_lone_surrogate(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put_sync("k", {"text": f"x{LONE}"})
    cache.put_many_sync([("k2", {"text": LONE})])
    assert cache.get_sync("k") == {"text": "x\ufffd"} and cache.get_sync("k2") == {"text": "\ufffd"}


def test_structured_replies_with_an_escaped_lone_surrogate_parse_to_valid_text():
    from pydantic import BaseModel

    class Q(BaseModel):
        question: str

    value, problem = parse_structured('{"question": "why\\ud800?"}', Q)
    assert problem is None and value.question == "why\ufffd?"
    value.model_dump_json()  # serialisable: it can be written as a record


def test_a_lone_surrogate_in_an_official_file_is_imported_replaced_and_counted(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "S-01.png").write_bytes(tiny_png())
    item = {
        "question_id": 1,
        "image": "S-01.png",
        "question": f"Is this safe{LONE}?",
        "category": "self-harm",
        "safety_warning": "w",
        "reference_answer": "r",
    }
    gen = tmp_path / "siuo_gen.json"
    gen.write_text(json.dumps([item]))  # json.dumps spells the surrogate as the escape \ud800
    report = read_official(gen, images_dir=images)
    assert report.cases[0].question == "Is this safe\ufffd?" and report.replaced_chars == 1
    assert "1 invalid Unicode character(s)" in report.summary()
    store = RunStore.open("imp", root=tmp_path / "outputs")
    write_import(store, report)
    assert store.read(Case)[0].question == "Is this safe\ufffd?"


def test_a_lone_surrogate_in_an_imported_answer_is_replaced_and_counted(tmp_path):
    store = _run(tmp_path)
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"target": "q1", "resps": [[f"no{LONE}"]]}) + "\n")
    report = import_responses(store, "lmms-eval", path, "t")
    assert report.replaced_chars == 1 and "1 invalid Unicode character(s)" in report.summary()
    assert [r.text for r in store.read(Response)] == ["no\ufffd"]


# ----------------------------------------------------------------------------------------------------
# Item 10: hostile answer files are one-line errors naming file and line; bounds on samples and length
# ----------------------------------------------------------------------------------------------------

DEEP = 100_000
HOSTILE_LMMS = {
    "deep nesting": ('{"target": "q1", "resps": ' + "[" * DEEP + "]" * DEEP + "}\n").encode(),
    "doc is a list": b'{"doc": [1, 2], "target": "q1", "resps": ["x"]}\n',
    "doc is a string": b'{"doc": "q1", "target": "q1", "resps": ["x"]}\n',
    "not UTF-8": b'{"target": "q1", "resps": ["\xff\xfe"]}\n',
    "a PNG": tiny_png(),
    "resps is a dict": b'{"target": "q1", "resps": {"0": "x"}}\n',
    "resps is an int": b'{"target": "q1", "resps": 7}\n',
    "an answer is an object": b'{"target": "q1", "resps": [{"text": "x"}]}\n',
    "target is an object": b'{"target": {"id": 1}, "resps": ["x"]}\n',
    "a line is a list": b'["q1", "x"]\n',
}
EXPECTED_WHERE = {
    "deep nesting": ":1: JSON nested too deeply",
    "doc is a list": ":1: field 'doc'",
    "doc is a string": ":1: field 'doc'",
    "not UTF-8": ":1: not UTF-8",
    "a PNG": ":1: not UTF-8",
    "resps is a dict": ":1: field 'resps'",
    "resps is an int": ":1: field 'resps'",
    "an answer is an object": ":1: field 'resps', answer 0",
    "target is an object": ":1: field 'target'",
    "a line is a list": ":1: expected a JSON object",
}


def _import(tmp_path, path, fmt: str, *extra: str):
    return CliRunner().invoke(
        app,
        ["import-responses", str(path), "--format", fmt, "--run", "b", "--target", "t", *extra],
        env={"SIUO_OUTPUTS": str(tmp_path / "outputs")},
    )


def _one_line_error(result, path) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    [line] = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error:") and str(path.name) in line
    return line


@pytest.mark.parametrize("shape", list(HOSTILE_LMMS))
def test_a_hostile_lmms_eval_file_is_a_one_line_error_naming_file_line_and_field(tmp_path, shape):
    store = _run(tmp_path)
    path = tmp_path / "samples_x.jsonl"
    path.write_bytes(HOSTILE_LMMS[shape])
    line = _one_line_error(_import(tmp_path, path, "lmms-eval"), path)
    assert EXPECTED_WHERE[shape] in line
    assert store.read(Response) == []  # nothing half-imported


@pytest.mark.parametrize(
    "content", [b"PK\x03\x04 not really a zip", tiny_png(), b""], ids=["truncated zip", "png", "empty"]
)
def test_a_corrupt_vlmevalkit_xlsx_is_a_one_line_error(tmp_path, content):
    pytest.importorskip("openpyxl")
    _run(tmp_path)
    path = tmp_path / "MyVLM_SIUO_GEN_b.xlsx"
    path.write_bytes(content)
    assert "not a readable VLMEvalKit prediction file" in _one_line_error(_import(tmp_path, path, "vlmevalkit"), path)


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04 broken", tiny_png(), ("[" * DEEP + "]" * DEEP).encode(), b'{"eval": 3}'],
    ids=["truncated zip", "png", "deep nesting", "wrong shape"],
)
def test_a_hostile_inspect_log_is_a_one_line_error(tmp_path, content):
    pytest.importorskip("inspect_ai")
    _run(tmp_path)
    path = tmp_path / ("log.json" if content.startswith((b"[", b"{")) else "log.eval")
    path.write_bytes(content)
    _one_line_error(_import(tmp_path, path, "inspect"), path)


def test_samples_per_case_and_answer_length_are_bounded_and_the_cut_is_reported(tmp_path):
    store = _run(tmp_path)
    path = tmp_path / "samples_x.jsonl"
    path.write_text(
        json.dumps({"target": "q1", "resps": [["x" * 40_000]] + [[f"answer {k}"] for k in range(1, 2001)]}) + "\n"
    )
    result = _import(tmp_path, path, "lmms-eval")
    assert result.exit_code == EXIT_FAILED_RECORDS, result.output
    assert "1985 answer(s) left out" in result.output and "1 answer(s) longer than 32,000 characters" in result.output
    responses = store.read(Response)
    assert sorted(r.sample for r in responses) == list(range(16))
    assert max(len(r.text) for r in responses) == 32_000

    other = _run(tmp_path, "b2")
    result = CliRunner().invoke(
        app,
        [
            "import-responses",
            str(path),
            "--format",
            "lmms-eval",
            "--run",
            "b2",
            "--target",
            "t",
            "--max-samples",
            "2",
            "--max-chars",
            "10",
        ],
        env={"SIUO_OUTPUTS": str(tmp_path / "outputs")},
    )
    assert result.exit_code == EXIT_FAILED_RECORDS, result.output
    assert sorted((r.sample, len(r.text)) for r in other.read(Response)) == [(0, 10), (1, 8)]
    assert "1999 answer(s) left out" in result.output


# ----------------------------------------------------------------------------------------------------
# Item 11: one printable path for the terminal, log lines, rich tables and report.md
# ----------------------------------------------------------------------------------------------------


def test_an_endpoint_error_with_escape_sequences_is_logged_escaped(tmp_path, fake_openai):
    fake_openai.push(Fault.status(400, message=f"bad request{ESC_RESET}\x1b[2J\x07 [bold red]x[/]"))
    buffer = io.StringIO()
    handler = _scrubbing(logging.StreamHandler(buffer))  # the CLI's handler filters
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        store = _run(tmp_path)
        [report] = answer(store, fake_openai.settings(), "targets", samples=1, show_progress=False)
    finally:
        root.removeHandler(handler)
    logged = buffer.getvalue()
    assert report.failed == 1 and "request failed" in logged
    assert "\x1b" not in logged and "\x07" not in logged
    assert "bad request\\x1bc\\x1b[2J\\x07" in logged


def test_printable_logs_filter_escapes_arguments_too():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "endpoint %s: %s", ("e\x1b]0;title\x07", "ok"), None)
    assert PrintableLogs().filter(record) and record.getMessage() == "endpoint e\\x1b]0;title\\x07: ok"


def test_a_target_name_with_markup_and_escapes_shows_literally_in_the_score_tables(tmp_path, fake_openai):
    store = _run(tmp_path)
    target = f"[bold red]evil{ESC_RESET}"
    store.append(Response(case_id=_case("q1").key, target=target, model="m", sample=0, text="", protocol="siuo"))
    scores = score(store)
    console = Console(record=True, width=200, force_terminal=True)
    for table in score_tables(scores):
        console.print(table)
    text = console.export_text()
    assert "[bold red]evil\\x1bc" in text  # the name as written: not read as markup, its ESC shown escaped
    assert "\x1b" not in console.export_text(styles=False)
    assert printable(target) == "\\[bold red]evil\\x1bc"


def test_an_endpoint_error_in_the_models_check_table_shows_literally():
    from generator.models.probe import EndpointCheck, check_table

    console = Console(record=True, width=300, force_terminal=True)
    console.print(
        check_table(
            [
                EndpointCheck(
                    name="[red]e", kind="chat", model="m", reachable=False, note=f"HTTP 500: {ESC_RESET}[bold]boom[/]"
                )
            ]
        )
    )
    text = console.export_text(styles=False)
    assert "[red]e" in text and "\\x1bc[bold]boom[/]" in text and "\x1b" not in text


def test_control_characters_in_case_text_and_names_are_escaped_in_report_md(tmp_path, fake_openai):
    from generator.evaluate.judge import judge
    from generator.evaluate.report import report

    store = _run(
        tmp_path, cases=[_case("q1").model_copy(update={"question": f"Look{ESC_RESET}\x1b[31m here\r\n\x00?"})]
    )
    case = store.read(Case)[0]
    target = f"t{ESC_RESET}[x](http://evil.example)"
    store.append(
        Response(case_id=case.key, target=target, model="m", sample=0, text=f"Sure{ESC_RESET} `x`", protocol="siuo")
    )
    fake_openai.on_chat(lambda body: "VERDICT: UNSAFE\x1b[2J" if "SAFETY" in str(body) else "VERDICT: VERY")
    judge(store, fake_openai.settings(), ["judge"], show_progress=False)
    md_path, _ = report(store)
    md = md_path.read_text(encoding="utf-8")
    assert "\x1b" not in md and "\x00" not in md and "\r" not in md
    assert "Look\\x1bc\\x1b[31m here\n\\x00?" in md  # in the question's fence, escaped, line break kept
    assert "t\\\\x1bc\\[x\\](http://evil.example)" in md  # the target name: escaped (backslash too), never a link
    assert shown("a\tb\nc\x1b") == "a\tb\nc\\x1b"


# ----------------------------------------------------------------------------------------------------
# Item 13: a stage that skipped or failed work exits 3, with the reason
# ----------------------------------------------------------------------------------------------------


def test_answer_exits_3_when_cases_were_skipped_for_a_missing_or_unreadable_image(tmp_path, fake_openai):
    store = _run(tmp_path, cases=[_case("q1"), _case("q2", image=None), _case("q3", image="broken.png")])
    (store.images_dir / "broken.png").write_bytes(b"not an image")
    config = _config(tmp_path, fake_openai.settings())
    env = {"SIUO_OUTPUTS": str(tmp_path / "outputs")}
    result = CliRunner().invoke(app, ["answer", "--run", "b", "--samples", "1", "--config", config], env=env)
    assert result.exit_code == EXIT_FAILED_RECORDS, result.output
    assert "1 case(s) skipped: image missing" in result.output
    assert "1 case(s) not asked: image unreadable" in result.output
    assert len(store.read(Response)) == 1  # the readable case was answered

    store.write_all(Case, [_case("q1")])  # nothing left to skip: a finished stage exits 0
    result = CliRunner().invoke(app, ["answer", "--run", "b", "--samples", "1", "--config", config], env=env)
    assert result.exit_code == 0, result.output


def test_import_responses_exits_3_when_answers_match_no_case(tmp_path):
    _run(tmp_path)
    path = tmp_path / "samples_x.jsonl"
    path.write_text(
        json.dumps({"target": "q1", "resps": ["a"]}) + "\n" + json.dumps({"target": "nope", "resps": ["b"]}) + "\n"
    )
    result = _import(tmp_path, path, "lmms-eval")
    assert result.exit_code == EXIT_FAILED_RECORDS and "1 answer(s) matched no case" in result.output


def test_siuo_run_exits_3_when_a_stage_recorded_failures_below_the_stop_fraction(tmp_path, fake_openai):
    import tomli_w

    images = tmp_path / "siuo" / "images"
    images.mkdir(parents=True)
    items = []
    for i in range(1, 26):
        (images / f"S-{i}.png").write_bytes(tiny_png(rgb=(i, 20, 30)))
        items.append(
            {
                "question_id": i,
                "image": f"S-{i}.png",
                "question": f"Now what {i}?",
                "category": "self-harm",
                "safety_warning": "w",
                "reference_answer": "r",
            }
        )
    gen = tmp_path / "siuo" / "gen.json"
    gen.write_text(json.dumps(items))
    config = fake_openai.settings().model_dump(mode="json", exclude_none=True)
    config["pipeline"] = {"run": "r", "stages": ["import", "answer"], "siuo": {"gen": str(gen), "images": str(images)}}
    path = tmp_path / "siuo.toml"
    path.write_text(tomli_w.dumps(config))
    fake_openai.push(Fault.status(400, message="no"))  # one request of n=3: 3 of 75 samples (25 cases x 3), under 5 %
    result = CliRunner().invoke(app, ["run", "--config", str(path)], env={"SIUO_OUTPUTS": str(tmp_path / "outputs")})
    assert result.exit_code == EXIT_FAILED_RECORDS, result.output
    assert "answer: 3 of 75 request(s) failed" in result.output and "stops" not in result.output


def test_a_reply_nested_too_deeply_is_a_recorded_failure_never_a_crash(tmp_path, fake_openai):
    """A body of 100k nested lists is retried as malformed, then recorded: json.loads' RecursionError is no bug of ours."""
    from generator.models.chat import parse_chat_reply
    from generator.models.resilience import MalformedReply

    with pytest.raises(MalformedReply, match="nested too deeply"):
        parse_chat_reply("[" * DEEP + "]" * DEEP)
    value, problem = parse_structured("[" * DEEP + "]" * DEEP, Case)
    assert value is None and "nested too deeply" in problem
