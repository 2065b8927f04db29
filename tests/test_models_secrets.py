"""An API key reaches the server and nothing else: no file the run writes, no cache, no log, no error."""

from __future__ import annotations

import asyncio
import json
import logging

from generator.config import redacted
from generator.models import ModelHub, user_message
from generator.records import Failure, Response
from generator.store import RunStore
from generator.testing.fake_openai import Fault, last_user_text

KEY = "sk-test-SIUO-0123456789abcdefSECRET"


def test_the_key_never_appears_in_any_file_log_or_error(fake_openai, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("SIUO_TEST_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # every logger, openai's and httpx's included
    logging.getLogger("openai").setLevel(logging.DEBUG)

    def chat(body):
        text = last_user_text(body)
        if "deny" in text:  # servers echo keys in auth errors; the door must scrub them
            return Fault.status(401, message=f"Incorrect API key provided: {KEY}. Bearer {KEY}")
        if "flaky" in text:
            return Fault.status(500, message=f"upstream failed for key {KEY[:-4]}****")
        return "fine"

    fake_openai.on_chat(chat)
    fake_openai.on_moderation(lambda body: Fault.status(403, message=f"key {KEY} may not moderate"))
    settings = fake_openai.settings(api_key_env="SIUO_TEST_API_KEY")
    store = RunStore.open("secret-run", root=tmp_path / "outputs")
    with store.update_manifest() as m:
        m.config = redacted(settings)

    async def stage():
        async with ModelHub(settings, store=store) as hub:
            client = hub.chat("targets")
            for prompt in ["hello", "deny me", "flaky one"]:
                [r] = await client.complete([user_message(prompt)], n=1)
                rec = Response(case_id=prompt, target=client.name, model=client.model, text=r.text, error=r.error)
                store.append(rec)
                if r.error:
                    store.append(Failure(stage="answer", work_key=rec.key, reason=r.error, model=client.model))
                    logging.getLogger("generator.test").warning("failed: %s", r.error)
            verdict = await hub.guard("text_guard").check_text("is this ok")
            store.append(Failure(stage="check", work_key="x", reason=verdict.error or "", raw=verdict.raw))
            return verdict

    verdict = asyncio.run(stage())
    assert verdict.flagged is None and "HTTP 403" in verdict.error
    assert all(h == f"Bearer {KEY}" for h in fake_openai.auth_headers), "the key was really used"

    failures = store.read(Failure)
    assert len(failures) == 3 and any("HTTP 401" in f.reason for f in failures)
    assert any("Incorrect API key provided: ***" in f.reason for f in failures), "the echoed key was masked"

    written = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    written += [p for p in fake_openai.cache_dir.rglob("*") if p.is_file()]
    assert any(p.name == "responses.jsonl" for p in written) and any(p.suffix == ".sqlite" for p in written)
    for path in written:
        data = path.read_bytes()
        assert KEY.encode() not in data and KEY[:-4].encode() not in data, f"key found in {path}"
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, json.dumps([f.reason for f in failures])):
        assert KEY not in text and KEY[:-4] not in text


def test_a_key_echoed_in_a_response_header_is_scrubbed_from_debug_logs(fake_openai, tmp_path, monkeypatch):
    """With -v, openai's debug log prints response headers; the CLI's log handler masks the key in them."""
    import io

    from generator.cli import _scrubbing

    monkeypatch.setenv("SIUO_TEST_API_KEY", KEY)
    fake_openai.on_chat(lambda body: Fault.status(401, message="denied", headers={"X-Echo-Key": KEY}))
    settings = fake_openai.settings(api_key_env="SIUO_TEST_API_KEY")
    stream = io.StringIO()
    handler = _scrubbing(logging.StreamHandler(stream))
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.DEBUG)
    logging.getLogger("openai").setLevel(logging.DEBUG)
    try:

        async def ask():
            async with ModelHub(settings, cache=False) as hub:
                return await hub.chat("targets").complete([user_message("hello")], n=1)

        [r] = asyncio.run(ask())
    finally:
        root.removeHandler(handler)
    logged = stream.getvalue()
    assert r.error and "HTTP 401" in r.error
    assert "x-echo-key" in logged.lower(), "the header was logged (the case this test is about)"
    assert KEY not in logged and KEY[:-4] not in logged
