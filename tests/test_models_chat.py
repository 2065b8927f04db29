"""The chat client against the loopback server: faults, cache, `n`, concurrency, budget, usage."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sqlite3
import time

import pytest
from PIL import Image

from generator.config import settings_from_dict
from generator.models import BudgetExceeded, ModelHub, system_message, user_message
from generator.models.cache import RequestCache
from generator.models.resilience import RateLimiter, scrub
from generator.records import Response
from generator.store import RunStore
from generator.testing.fake_openai import Fault, has_image, last_user_text


def run(coro):
    return asyncio.run(coro)


def with_endpoint(settings, **fields):
    """A copy of `settings` whose endpoint `fake` has `fields` changed."""
    data = settings.model_dump()
    data["endpoints"]["fake"].update(fields)
    return settings_from_dict(data)


async def ask(settings, prompts, n=1, **kw):
    async with ModelHub(settings) as hub:
        client = hub.chat("judge")
        return await asyncio.gather(*(client.complete([user_message(p)], n=n, **kw) for p in prompts))


# ----------------------------------------------------------------------------------------------------
# Basics
# ----------------------------------------------------------------------------------------------------


def test_complete_returns_text_usage_and_sends_the_request(fake_openai):
    fake_openai.on_chat(lambda body: "answer to " + last_user_text(body))
    settings = fake_openai.settings()

    async def go():
        async with ModelHub(settings) as hub:
            client = hub.chat("judge")
            assert (client.name, client.model) == ("fake", "fake-model")
            return await client.complete(
                [system_message("be brief"), user_message("why is the sky blue")],
                temperature=0.3,
                max_tokens=50,
                seed=7,
            )

    [r] = run(go())
    assert r.ok and r.text == "answer to why is the sky blue" and not r.cached and r.sample_index == 0
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 7  # words, as the server counts
    [body] = fake_openai.chat_requests()
    assert body["model"] == "fake-model" and body["temperature"] == 0.3 and body["max_tokens"] == 50
    assert body["seed"] == 7 and "n" not in body
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


def test_n_in_one_request_when_the_server_honours_it(fake_openai):
    fake_openai.on_chat(lambda body: [f"sample {i}" for i in range(body.get("n", 1))])
    results = run(ask(fake_openai.settings(), ["q"], n=3))[0]
    assert [r.text for r in results] == ["sample 0", "sample 1", "sample 2"]
    assert [r.sample_index for r in results] == [0, 1, 2]
    assert fake_openai.hits == 1 and fake_openai.chat_requests()[0]["n"] == 3
    # usage of the one request is split over the samples, nothing lost
    assert sum(r.usage.completion_tokens for r in results) == 6


def test_n_falls_back_to_separate_requests_when_the_server_ignores_it(fake_openai):
    fake_openai.supports_n = False
    counter = iter(range(100))
    fake_openai.on_chat(lambda body: f"reply {next(counter)}")
    settings = fake_openai.settings()

    async def go():
        async with ModelHub(settings) as hub:
            client = hub.chat("judge")
            first = await client.complete([user_message("a")], n=3)
            second = await client.complete([user_message("b")], n=2)
            return first, second

    first, second = run(go())
    assert all(r.ok for r in first + second)
    assert len({r.text for r in first}) == 3, "each sample is its own request, not one copied"
    bodies = fake_openai.chat_requests()
    assert len(bodies) == 3 + 2
    assert bodies[0].get("n") == 3 and all("n" not in b for b in bodies[1:]), "learned: no more n>1 requests"


def test_rerun_is_served_entirely_from_cache(fake_openai):
    settings = fake_openai.settings()
    prompts = [f"question {i}" for i in range(10)]
    first = run(ask(settings, prompts, n=2))
    hits = fake_openai.hits
    assert hits == 10
    again = run(ask(settings, prompts, n=2))
    assert fake_openai.hits == hits, "a re-run made network requests"
    assert all(r.cached for rs in again for r in rs)
    assert [[r.text for r in rs] for rs in again] == [[r.text for r in rs] for rs in first]


def test_more_samples_later_costs_only_the_new_ones(fake_openai):
    fake_openai.on_chat(lambda body: [f"s{i}" for i in range(body.get("n", 1))])
    settings = fake_openai.settings()
    run(ask(settings, ["q"], n=2))
    [results] = run(ask(settings, ["q"], n=4))
    assert [r.cached for r in results] == [True, True, False, False]
    assert fake_openai.hits == 2 and fake_openai.chat_requests()[1]["n"] == 2
    [later] = run(ask(settings, ["q"], n=2, sample_offset=4))
    assert [r.sample_index for r in later] == [4, 5] and fake_openai.hits == 3


def test_cache_can_be_bypassed_per_call_and_params_change_the_key(fake_openai):
    settings = fake_openai.settings()
    run(ask(settings, ["q"]))
    run(ask(settings, ["q"], use_cache=False))
    assert fake_openai.hits == 2
    run(ask(settings, ["q"], temperature=0.9))
    assert fake_openai.hits == 3, "another temperature is another request"
    run(ask(fake_openai.settings(cache=False), ["q"]))
    assert fake_openai.hits == 4


def test_non_retryable_error_is_recorded_at_once(fake_openai):
    fake_openai.on_chat(lambda body: Fault.status(400, message="bad request: unknown field"))
    [[r]] = run(ask(fake_openai.settings(), ["q"]))
    assert r.text is None and r.status == 400 and "HTTP 400" in r.error and "unknown field" in r.error
    assert fake_openai.hits == 1


# ----------------------------------------------------------------------------------------------------
# Faults: recovered when transient, recorded when persistent; never a crash, loss or duplicate
# ----------------------------------------------------------------------------------------------------

TRANSIENT = {
    "429": Fault.status(429, retry_after=0),
    "500": Fault.status(500),
    "503": Fault.status(503),
    "hang": Fault.hang(5),
    "malformed": Fault.malformed(),
    "drop": Fault.drop(),
}


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_transient_fault_is_recovered(fake_openai, kind):
    fake_openai.push(TRANSIENT[kind], TRANSIENT[kind])
    settings = with_endpoint(fake_openai.settings(), timeout_s=0.3)
    t0 = time.monotonic()
    [[r]] = run(ask(settings, ["hello"]))
    assert r.ok and r.text == "echo: hello"
    assert fake_openai.hits == 3
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_persistent_fault_is_recorded_not_cached(fake_openai, kind):
    fault = TRANSIENT[kind]
    fake_openai.on_chat(lambda body: fault)
    settings = with_endpoint(fake_openai.settings(), timeout_s=0.3, max_retries=4, max_identical_failures=3)
    [[r]] = run(ask(settings, ["hello"]))
    assert r.text is None and r.error and "gave up after 3 identical failures" in r.error
    assert fake_openai.hits == 3, "capped by identical failures, never retried forever"
    fake_openai.on_chat(lambda body: "fine now")
    [[again]] = run(ask(settings, ["hello"]))
    assert again.ok and not again.cached, "a failure must not be served from the cache"


def test_retry_after_is_honoured(fake_openai):
    fake_openai.push(Fault.status(429, retry_after=1))
    t0 = time.monotonic()
    [[r]] = run(ask(fake_openai.settings(), ["q"]))
    assert r.ok and fake_openai.hits == 2
    assert time.monotonic() - t0 >= 0.95, "Retry-After: 1 was not waited for"


def test_max_retries_bounds_mixed_failures(fake_openai):
    faults = iter([Fault.status(500), Fault.drop()] * 10)
    fake_openai.on_chat(lambda body: next(faults))
    settings = with_endpoint(fake_openai.settings(), max_retries=3, max_identical_failures=3)
    [[r]] = run(ask(settings, ["q"]))
    assert r.error and "gave up after 4 attempts" in r.error
    assert fake_openai.hits == 4


def test_batch_with_faults_loses_nothing_and_writes_no_duplicate(fake_openai, tmp_path):
    """A stage-like loop: 40 prompts, every third request misbehaves once; all results land once."""
    faults = [Fault.status(429, retry_after=0), Fault.status(500), Fault.malformed(), Fault.drop(), Fault.hang(3)]
    counter = {"n": 0}

    def script(body):
        counter["n"] += 1
        if counter["n"] % 3 == 0:
            return faults[(counter["n"] // 3) % len(faults)]
        return "answer: " + last_user_text(body)

    fake_openai.on_chat(script)
    settings = with_endpoint(fake_openai.settings(), timeout_s=0.5, max_concurrency=8)
    store = RunStore.open("faults", root=tmp_path)
    cases = [f"case-{i}" for i in range(40)]

    async def stage():
        async with ModelHub(settings, store=store) as hub:
            client = hub.chat("targets")
            done = store.done_keys(Response)

            async def one(case):
                rec = Response(case_id=case, target=client.name, model=client.model)
                if rec.key in done:
                    return
                [r] = await client.complete([user_message(case)])
                store.append(rec.model_copy(update={"text": r.text, "error": r.error, "usage": r.usage}))

            await asyncio.gather(*(one(c) for c in cases))

    run(stage())
    rows = [json.loads(line) for line in (store.path / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and len({r["key"] for r in rows}) == 40
    assert all(r["error"] is None and r["text"] == "answer: " + r["case_id"] for r in rows)
    hits = fake_openai.hits
    run(stage())  # resume: nothing left to do, nothing asked, nothing written twice
    assert fake_openai.hits == hits
    assert len((store.path / "responses.jsonl").read_text().splitlines()) == 40


# ----------------------------------------------------------------------------------------------------
# Limits
# ----------------------------------------------------------------------------------------------------


def test_concurrency_per_endpoint_is_bounded(fake_openai):
    fake_openai.latency = 0.1
    settings = with_endpoint(fake_openai.settings(), max_concurrency=4)
    t0 = time.monotonic()
    results = run(ask(settings, [f"q{i}" for i in range(20)]))
    elapsed = time.monotonic() - t0
    assert all(r.ok for [r] in results)
    assert fake_openai.max_in_flight == 4, "never more than 4 in flight, and the 4 slots are used"
    assert 0.45 < elapsed < 2.0


def test_concurrency_bound_is_shared_by_roles_on_one_endpoint(fake_openai):
    fake_openai.latency = 0.05
    settings = with_endpoint(fake_openai.settings(), max_concurrency=3)

    async def go():
        async with ModelHub(settings) as hub:
            a, b = hub.chat("judge"), hub.chat("proposer")
            await asyncio.gather(*(c.complete([user_message(f"{i}")]) for i in range(6) for c in (a, b)))

    run(go())
    assert fake_openai.max_in_flight <= 3 and fake_openai.hits == 12


def test_rate_limiter_keeps_a_sliding_window():
    async def go():
        limiter = RateLimiter(5, period=0.4)
        stamps = []
        for _ in range(12):
            await limiter.acquire()
            stamps.append(time.monotonic())
        return stamps

    stamps = run(go())
    assert stamps[-1] - stamps[0] >= 0.8 - 0.02  # 12 starts need 3 windows
    for t in stamps:
        assert sum(1 for u in stamps if t <= u < t + 0.4 - 1e-3) <= 5


def test_requests_per_minute_limits_the_endpoint(fake_openai):
    settings = with_endpoint(fake_openai.settings(), requests_per_minute=3)

    async def go():
        async with ModelHub(settings) as hub:
            rt = hub.runtime("fake")
            rt.limiter.period = 0.3  # the same limiter, a shorter window so the test is fast
            client = hub.chat("judge")
            t0 = time.monotonic()
            await asyncio.gather(*(client.complete([user_message(f"{i}")]) for i in range(7)))
            return time.monotonic() - t0

    assert run(go()) >= 0.55 and fake_openai.hits == 7


# ----------------------------------------------------------------------------------------------------
# Images in messages
# ----------------------------------------------------------------------------------------------------


def _png(path, size, colour):
    Image.new("RGB", size, colour).save(path)
    return path


def test_images_go_as_data_urls_downscaled_and_hashed_in_the_cache_key(fake_openai, tmp_path):
    big = _png(tmp_path / "big.png", (64, 32), (255, 0, 0))
    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 10), (0, 0, 255)).save(jpg, format="JPEG")
    settings = fake_openai.settings()

    async def go(image, max_side):
        async with ModelHub(settings) as hub:
            return await hub.chat("targets").complete([user_message("what is this", images=[image], max_side=max_side)])

    run(go(big, 16))
    body = fake_openai.chat_requests()[-1]
    assert has_image(body)
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")  # prepared compactly: downscaled, sent as JPEG
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (16, 8)

    run(go(jpg, None))
    url_jpg = fake_openai.chat_requests()[-1]["messages"][0]["content"][1]["image_url"]["url"]
    assert url_jpg.startswith("data:image/jpeg;base64,")

    run(go(big, 16))
    assert fake_openai.hits == 2, "same image, same request: cached"
    _png(big, (64, 32), (0, 255, 0))  # new content under the same name: new request
    run(go(big, 16))
    assert fake_openai.hits == 3

    con = sqlite3.connect(fake_openai.cache_dir / "requests.sqlite")
    blob = " ".join(str(v) for row in con.execute("SELECT key, value FROM replies") for v in row)
    assert url.split(",", 1)[1][:40] not in blob, "the cache must not store image base64"


def test_unreadable_image_is_a_clear_error(tmp_path):
    from generator.models.messages import ImageError

    with pytest.raises(ImageError, match="missing.png"):
        user_message("q", images=[tmp_path / "missing.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        user_message("q", images=[bad], max_side=8)


# ----------------------------------------------------------------------------------------------------
# Usage, cost and budget
# ----------------------------------------------------------------------------------------------------


def test_usage_per_role_reaches_the_run_manifest(fake_openai, tmp_path):
    settings = with_endpoint(fake_openai.settings(), price_input_per_1k=1.0, price_output_per_1k=2.0)
    store = RunStore.open("usage", root=tmp_path)

    async def go():
        async with ModelHub(settings, store=store) as hub:
            await hub.chat("proposer").complete([user_message("one two three")])
            await hub.chat("targets").complete([user_message("four five")], n=2)
            return hub.usage, hub.total_cost

    usage, total = run(go())
    assert set(usage) == {"proposer", "targets:fake"}
    assert usage["proposer"].prompt_tokens == 3 and usage["proposer"].completion_tokens == 4
    assert usage["proposer"].cost_usd == pytest.approx(3 / 1000 * 1.0 + 4 / 1000 * 2.0)
    manifest = json.loads((store.path / "run.json").read_text())
    assert manifest["usage"]["proposer"]["prompt_tokens"] == 3
    assert manifest["usage"]["targets:fake"]["completion_tokens"] == usage["targets:fake"].completion_tokens
    assert total == pytest.approx(sum(u.cost_usd for u in usage.values()))
    run(go())  # cached: no new spend is booked
    manifest = json.loads((store.path / "run.json").read_text())
    assert manifest["usage"]["proposer"]["prompt_tokens"] == 3


def test_budget_stops_before_the_request_that_would_pass_it(fake_openai, tmp_path):
    data = with_endpoint(fake_openai.settings(), price_input_per_1k=1.0, price_output_per_1k=1.0).model_dump()
    data["budget"] = {"max_cost_usd": 0.05}
    settings = settings_from_dict(data)
    store = RunStore.open("budget", root=tmp_path)

    async def go():
        async with ModelHub(settings, store=store) as hub:
            client = hub.chat("targets")
            written = 0
            try:
                for i in range(100):
                    [r] = await client.complete([user_message(f"question number {i}")], max_tokens=10)
                    store.append(Response(case_id=f"c{i}", target="fake", model="m", text=r.text, usage=r.usage))
                    written += 1
            except BudgetExceeded as exc:
                return written, hub.total_cost, str(exc)
            return written, hub.total_cost, None

    written, spent, message = run(go())
    assert message is not None and "budget" in message and "finished records are kept" in message
    assert 0 < written < 100 and spent <= 0.05
    assert fake_openai.hits == written, "no request was sent past the budget"
    assert len(store.read(Response)) == written
    assert json.loads((store.path / "run.json").read_text())["usage"]["targets:fake"]["cost_usd"] == pytest.approx(
        spent
    )


def test_budget_counts_requests_in_flight(fake_openai):
    fake_openai.latency = 0.1
    data = with_endpoint(fake_openai.settings(), price_input_per_1k=1.0, price_output_per_1k=1.0).model_dump()
    data["budget"] = {"max_cost_usd": 0.05}
    settings = settings_from_dict(data)

    async def go():
        async with ModelHub(settings) as hub:
            client = hub.chat("targets")
            with pytest.raises(BudgetExceeded):
                await asyncio.gather(*(client.complete([user_message(f"q {i}")], max_tokens=10) for i in range(50)))
            await asyncio.sleep(0.3)
            return hub.total_cost

    spent = run(go())
    assert spent <= 0.05 and fake_openai.hits < 50


def test_missing_key_env_is_a_clear_config_error(fake_openai, monkeypatch):
    from generator.config import ConfigError

    monkeypatch.delenv("SIUO_TEST_NO_SUCH_KEY", raising=False)
    settings = fake_openai.settings(api_key_env="SIUO_TEST_NO_SUCH_KEY")
    hub = ModelHub(settings, cache=False)
    with pytest.raises(ConfigError, match="SIUO_TEST_NO_SUCH_KEY is not set"):
        hub.chat("judge")


def test_no_key_endpoint_never_sends_the_users_openai_key(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-own-secret-key-123456")
    run(ask(fake_openai.settings(), ["q"]))
    assert fake_openai.auth_headers == ["Bearer no-key"]


def test_scrub_masks_keys_and_bearer_tokens():
    text = "Incorrect API key provided: sk-proj-abcdef123456. header Authorization: Bearer abc.def and mykey-XYZ"
    out = scrub(text, ["mykey-XYZ"])
    assert "abcdef123456" not in out and "abc.def" not in out and "mykey-XYZ" not in out


def test_cache_is_safe_under_concurrent_tasks(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")

    async def go():
        await asyncio.gather(*(cache.put(f"k{i}", {"text": str(i)}) for i in range(200)))
        return await asyncio.gather(*(cache.get(f"k{i}") for i in range(200)))

    values = run(go())
    assert [v["text"] for v in values] == [str(i) for i in range(200)]
    assert cache.stats().entries == 200
    assert cache.clear() == 200 and cache.stats().entries == 0
    cache.close()


def test_usage_reaches_run_json_while_the_run_goes_on(fake_openai, tmp_path, monkeypatch):
    import generator.models.hub as hub_module

    monkeypatch.setattr(hub_module, "USAGE_FLUSH_S", 0.0)
    store = RunStore.open("live", root=tmp_path)

    async def go():
        hub = ModelHub(fake_openai.settings(), store=store)
        await hub.chat("proposer").complete([user_message("one two")])
        seen = json.loads((store.path / "run.json").read_text())["usage"]  # before close: a kill here keeps it
        await hub.chat("proposer").complete([user_message("three four")])
        await hub.aclose()
        return seen

    seen = run(go())
    assert seen["proposer"]["prompt_tokens"] == 2
    assert json.loads((store.path / "run.json").read_text())["usage"]["proposer"]["prompt_tokens"] == 4


def test_the_samples_of_one_request_are_cached_all_or_none(tmp_path):
    from generator.models.cache import RequestCache

    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put_many_sync([("k0", {"text": "a"}), ("k1", {"text": "b"})])
    assert cache.get_sync("k0") == {"text": "a"} and cache.get_sync("k1") == {"text": "b"}

    class Unserialisable:
        pass

    import pytest

    with pytest.raises(TypeError):
        cache.put_many_sync([("k2", {"text": "c"}), ("k3", {"text": Unserialisable()})])
    assert cache.get_sync("k2") is None  # nothing of the failed batch was stored


@pytest.mark.slow  # a stress test (about 6 s)
def test_cache_threads_with_a_heap_census_running(tmp_path):
    """CI once failed with sqlite3 "bad parameter or other API misuse": the judge's memory census
    (`gc.get_objects()` in the fake server's thread) kept a cursor alive past the cache's lock; freed in that
    thread, it reset a cached statement the judge's thread was stepping. Statements are no longer cached and
    every cursor is closed under the lock. A race: on the old cache this failed in one run of three."""
    import gc
    import threading

    cache = RequestCache(tmp_path / "c.sqlite")
    stop = threading.Event()
    errors: list[str] = []

    def census():
        while not stop.is_set():
            held = gc.get_objects()  # holds every live cursor for a moment, then frees them here
            time.sleep(0.0005)
            del held

    def worker(i: int):
        try:
            for n in range(200):
                cache.put_many_sync([(f"{i}-{n}", {"text": str(n)})])
                assert cache.get_sync(f"{i}-{n}") == {"text": str(n)}
        except Exception as exc:  # collected: an exception in a thread would otherwise pass unseen
            errors.append(repr(exc))

    walker = threading.Thread(target=census)
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    walker.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    walker.join()
    assert errors == [] and cache.stats().entries == 600
    cache.close()
