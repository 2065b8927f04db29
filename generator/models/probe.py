"""`siuo models check`: ping every configured endpoint once and say what it can do.

Why: a long run should not discover after an hour that the judge's key is missing or that the target
cannot see images. Each probe is one tiny request (a few tokens), never cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel
from rich.table import Table

from generator.config import ConfigError, Settings
from generator.models.chat import ChatClient
from generator.models.hub import ModelHub
from generator.models.messages import tiny_png, user_message
from generator.models.resilience import ModelError, RequestFailed
from generator.terminal import printable


class _Probe(BaseModel):
    answer: str


@dataclass
class EndpointCheck:
    name: str
    kind: str
    model: str
    reachable: bool | None = None
    latency_ms: float | None = None
    images: bool | None = None
    json_schema: bool | None = None
    structured_mode: str | None = None
    note: str = ""


async def _check_chat(client: ChatClient, row: EndpointCheck) -> None:
    t0 = time.perf_counter()
    [ping] = await client.complete(
        [user_message("Reply with the single word OK.")], max_tokens=5, temperature=0.0, use_cache=False
    )
    row.latency_ms = (time.perf_counter() - t0) * 1000
    row.reachable = ping.ok
    if not ping.ok:
        row.note = ping.error or ""
        return
    [img] = await client._complete(  # noqa: SLF001 - no retries on an HTTP error: the error is the answer
        [user_message("What colour is this image? One word.", images=[tiny_png(16, 16)])],
        1,
        {"max_tokens": 5, "temperature": 0.0},
        0,
        use_cache=False,
        fail_fast_on_status=True,
    )
    row.images = img.ok
    # One json_schema request, no retries on an HTTP error: the answer is the capability.
    rt = client._rt  # noqa: SLF001 - the check inspects the runtime it owns
    schema = _Probe.model_json_schema()
    try:
        await rt.call(
            lambda: rt.client.chat.completions.create(
                model=client.model,
                max_tokens=20,
                temperature=0.0,
                messages=[{"role": "user", "content": "Answer in JSON: what is 2+2?"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "probe", "schema": schema, "strict": False},
                },
            ),
            fail_fast_on_status=True,
        )
        row.json_schema = True
    except RequestFailed:
        row.json_schema = False
    sr = await client.structured(
        [user_message("What is 2+2? Put the answer in the field 'answer'.")],
        _Probe,
        temperature=0.0,
        max_tokens=40,
        use_cache=False,
    )
    row.structured_mode = sr.mode if sr.ok else f"failed ({sr.mode})"


async def check_endpoints(settings: Settings, names: list[str] | None = None) -> list[EndpointCheck]:
    """One row per endpoint (all of them, or `names`), probes run one endpoint after another."""
    rows: list[EndpointCheck] = []
    names = names or list(settings.endpoints)
    async with ModelHub(settings, cache=False) as hub:
        for name in names:
            ep = settings.endpoint(name)
            row = EndpointCheck(name=name, kind=ep.kind, model=ep.model)
            rows.append(row)
            try:
                if ep.kind in ("chat", "chat_guard"):
                    await _check_chat(hub.chat(name), row)
                elif ep.kind == "moderation":
                    t0 = time.perf_counter()
                    verdict = await hub.guard(name).check_text("hello", use_cache=False)
                    row.latency_ms = (time.perf_counter() - t0) * 1000
                    row.reachable = verdict.flagged is not None
                    row.note = verdict.error or ""
                    img = await hub.guard(name).check_image(tiny_png(16, 16), use_cache=False)
                    row.images = img.flagged is not None
                elif ep.kind == "images":
                    # Generating costs money: list the models instead (reachability and the key only).
                    rt = hub.runtime(name)
                    rt.check_key()
                    t0 = time.perf_counter()
                    await rt.call(rt.client.models.list, fail_fast_on_status=True)
                    row.latency_ms = (time.perf_counter() - t0) * 1000
                    row.reachable = True
                    row.note = "GET /models only (no image generated)"
            except ConfigError as exc:
                row.reachable = False
                row.note = str(exc)
            except (RequestFailed, ModelError) as exc:
                row.reachable = False
                row.note = str(exc)
    return rows


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("[green]yes[/]" if v else "[red]no[/]")


def check_table(rows: list[EndpointCheck]) -> Table:
    table = Table(title="Model endpoints")
    for col in ("endpoint", "kind", "model", "reachable", "latency", "images", "json_schema", "structured", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            printable(r.name),
            printable(r.kind),
            printable(r.model),
            _yes_no(r.reachable),
            "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms",
            _yes_no(r.images),
            _yes_no(r.json_schema),
            r.structured_mode or "-",
            printable(r.note[:200]),
        )
    return table
