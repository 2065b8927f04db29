"""A loopback server that speaks the OpenAI wire format, scripted per test, with fault injection.

Why a real HTTP server and not a mocked client: the retry, timeout, connection-pool and parsing code
under test is the real `openai` client's, so only a real socket exercises it. The server answers
`POST /v1/chat/completions` (incl. `n`, JSON modes, image content parts), `/v1/moderations`,
`/v1/images/generations` and `GET /v1/models`, counts every hit, and can misbehave on purpose:
`Fault.status(429, retry_after=1)`, `Fault.status(500)`, `Fault.hang(seconds)`, `Fault.malformed()`,
`Fault.drop()` (connection closed mid-response).

    with FakeOpenAI() as fake:
        fake.push("first reply", Fault.status(500), "third reply")
        fake.on_chat(lambda body: "echo: " + last_user_text(body))
        settings = fake.settings(judge="fake")

Benchmarks run it in its own process: `python -m generator.testing.fake_openai --port 8123 --latency 0.1`.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Union

from generator.models.messages import tiny_png

ChatReply = Union[str, "Fault", list]
"""What a chat script returns: one text (copied to every `n` choice), a list of texts (one per choice),
or a Fault."""


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for one request."""

    kind: str
    """`status`, `hang`, `malformed` or `drop`."""
    code: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    message: str = "injected fault"
    headers: dict[str, str] | None = None

    @classmethod
    def status(
        cls,
        code: int,
        retry_after: float | None = None,
        message: str = "injected fault",
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer with HTTP `code` (and a `Retry-After` header when given, plus `headers`) and an OpenAI error body."""
        return cls("status", code=code, retry_after=retry_after, message=message, headers=headers)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Say nothing for `seconds` (past the client's timeout), then answer normally."""
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """HTTP 200 with a JSON content type and a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def drop(cls) -> Fault:
        """Send the status line and part of the body, then close the connection."""
        return cls("drop")


# ----------------------------------------------------------------------------------------------------
# Helpers for scripts
# ----------------------------------------------------------------------------------------------------


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return []


def last_user_text(body: dict) -> str:
    """The text of the last user message of a chat request (text parts joined by newlines)."""
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            return "\n".join(_content_texts(msg.get("content")))
    return ""


def has_image(body: dict) -> bool:
    """Whether any message of a chat request carries an image content part."""
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False


def count_words(text: str) -> int:
    return len(text.split())


def prompt_words(body: dict) -> int:
    """Rough prompt tokens of a chat request: words of every text part (images count 85, as OpenAI's low detail)."""
    n = 0
    for msg in body.get("messages") or []:
        content = msg.get("content")
        n += sum(count_words(t) for t in _content_texts(content))
        if isinstance(content, list):
            n += 85 * sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return n


def _default_chat(body: dict) -> ChatReply:
    return "echo: " + last_user_text(body)


def _default_moderation(body: dict) -> dict:
    return {
        "flagged": False,
        "categories": {"violence": False, "self-harm": False},
        "category_scores": {"violence": 0.01, "self-harm": 0.01},
    }


def _default_image(body: dict) -> bytes:
    return tiny_png()


# ----------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # a burst of 64+ new connections must not overflow the listen backlog
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is part of the tests: no traceback on stderr."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections, as with a real server
    wbufsize = 1 << 16  # headers + body leave in one write (flushed per request): no Nagle/delayed-ACK stall
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logging
        pass

    # -- plumbing ---------------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_fault(self, fault: Fault) -> bool:
        """Act out a fault; True when the request is answered (or dropped), False to answer normally."""
        if fault.kind == "status":
            headers = dict(fault.headers or {})
            if fault.retry_after is not None:
                ra = fault.retry_after
                headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            err = {"error": {"message": fault.message, "type": "injected", "code": str(fault.code)}}
            self._send_json(fault.code, err, headers)
            return True
        if fault.kind == "malformed":
            data = b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        if fault.kind == "drop":
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
                b'{"id": "chatcmpl-dropped", "choices": ['
            )
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True
            return True
        if fault.kind == "hang":
            self.server.fake._stopping.wait(fault.seconds)
            return False
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    # -- verbs ------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server.fake
        fake._count(self.path, None)
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(
                200, {"object": "list", "data": [{"id": fake.model, "object": "model", "owned_by": "fake"}]}
            )
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            fake._count(self.path, None)
            self._send_json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            return
        fake._count(self.path, body, self.headers.get("Authorization"))
        try:
            if fake.latency:
                fake._stopping.wait(fake.latency)
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/chat/completions"):
                self._chat(body)
            elif path.endswith("/moderations"):
                self._moderation(body)
            elif path.endswith("/images/generations"):
                self._image(body)
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired during a hang)
        finally:
            fake._done()

    def _chat(self, body: dict) -> None:
        fake = self.server.fake
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema" and fake.json_schema_status is not None:
            self._send_fault(Fault.status(fake.json_schema_status, message="json_schema is not supported here"))
            return
        reply = fake._next_chat(body)
        if isinstance(reply, Fault):
            if self._send_fault(reply):
                return
            reply = fake._chat_fn(body)
            if isinstance(reply, Fault):  # a script may fault twice; never loop
                self._send_fault(Fault.status(500))
                return
        n = int(body.get("n") or 1)
        texts = [str(t) for t in reply] if isinstance(reply, list) else [str(reply)] * n
        if not fake.supports_n:
            texts = texts[:1]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop", "logprobs": None}
            for i, t in enumerate(texts)
        ]
        p_tokens = prompt_words(body)
        c_tokens = sum(count_words(t) for t in texts)
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{fake.hits}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", fake.model),
                "choices": choices,
                "usage": {
                    "prompt_tokens": p_tokens,
                    "completion_tokens": c_tokens,
                    "total_tokens": p_tokens + c_tokens,
                },
            },
        )

    def _moderation(self, body: dict) -> None:
        fake = self.server.fake
        result = fake._moderation_fn(body)
        if isinstance(result, Fault):
            if self._send_fault(result):
                return
            result = _default_moderation(body)
        result = {"flagged": False, "categories": {}, "category_scores": {}, **result}
        self._send_json(
            200, {"id": f"modr-{fake.hits}", "model": body.get("model", "fake-moderation"), "results": [result]}
        )

    def _image(self, body: dict) -> None:
        fake = self.server.fake
        n = int(body.get("n") or 1)
        data = []
        for _ in range(n):
            png = fake._image_fn(body)
            if isinstance(png, Fault):
                if self._send_fault(png):
                    return
                png = tiny_png()
            data.append({"b64_json": base64.b64encode(png).decode("ascii")})
        self._send_json(200, {"created": int(time.time()), "data": data})


class FakeOpenAI:
    """The loopback server; see the module docstring. Thread-safe counters; scripts run in server threads."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        model: str = "fake-model",
        cache_dir: str | Path | None = None,
    ):
        self.host = host
        self.model = model
        self.latency = latency
        """Seconds added to every reply."""
        self.supports_n = True
        """False: answer one choice whatever `n` asks (like servers that ignore `n`)."""
        self.json_schema_status: int | None = None
        """Answer `response_format: json_schema` with this HTTP status (llama.cpp answers 500); None: accept."""
        self.cache_dir = Path(cache_dir) if cache_dir else None
        """Where `settings()` puts the request cache (tests pass a tmp folder)."""
        self.requests: list[tuple[str, dict | None]] = []
        self.auth_headers: list[str | None] = []
        self.hits = 0
        self.hits_by_path: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        """Most requests the server was answering at once (to check a client's concurrency bound)."""
        self.record_bodies = True
        self._queue: collections.deque[ChatReply] = collections.deque()
        self._chat_fn: Callable[[dict], ChatReply] = _default_chat
        self._moderation_fn: Callable[[dict], Any] = _default_moderation
        self._image_fn: Callable[[dict], Any] = _default_image
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # -- life -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wake any hanging handler
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (a server process for benchmarks and kill tests);
        request bodies are not kept, so a long run does not grow memory."""
        self.record_bodies = False
        print(self.base_url, flush=True)
        try:
            self._server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------------------

    def on_chat(self, fn: Callable[[dict], ChatReply]) -> None:
        """Answer chat requests with `fn(body)` once the `push` queue is empty."""
        self._chat_fn = fn

    def on_moderation(self, fn: Callable[[dict], Any]) -> None:
        """`fn(body)` -> one moderation result dict (flagged, categories, category_scores) or a Fault."""
        self._moderation_fn = fn

    def on_image(self, fn: Callable[[dict], Any]) -> None:
        """`fn(body)` -> PNG bytes (called once per image of `n`) or a Fault."""
        self._image_fn = fn

    def push(self, *replies: ChatReply) -> None:
        """Queue chat replies (text, list of texts, or Fault), consumed in order before `on_chat`'s fn."""
        with self._lock:
            self._queue.extend(replies)

    def reset_counts(self) -> None:
        with self._lock:
            self.hits = 0
            self.hits_by_path.clear()
            self.requests.clear()
            self.auth_headers.clear()
            self.max_in_flight = self.in_flight

    def chat_requests(self) -> list[dict]:
        """Bodies of the chat requests received, in order."""
        with self._lock:
            return [b for p, b in self.requests if p.endswith("/chat/completions") and b is not None]

    def settings(
        self, *, cache: bool = True, api_key_env: str | None = None, endpoint: dict | None = None, **roles: Any
    ):
        """A Settings whose endpoint `fake` (chat), `fake-guard` (moderation), `fake-chat-guard` (chat_guard)
        and `fake-images` (images) point at this server. Roles default to these endpoints; keyword
        arguments override roles (`judge=["fake", "fake2"]` needs `endpoint`s you add yourself).

        `endpoint`: extra Endpoint fields applied to every endpoint (e.g. `{"timeout_s": 0.5}`).
        Retries back off from 10 ms here so fault tests stay fast.
        """
        from generator.config import settings_from_dict

        common = {
            "base_url": self.base_url,
            "api_key_env": api_key_env,
            "timeout_s": 5.0,
            "retry_base_delay_s": 0.01,
            "outage_patience_s": 0.0,
            **(endpoint or {}),
        }
        endpoints = {
            "fake": {**common, "model": self.model, "kind": "chat"},
            "fake-guard": {**common, "model": "fake-moderation", "kind": "moderation"},
            "fake-chat-guard": {**common, "model": "fake-guard-model", "kind": "chat_guard"},
            "fake-images": {**common, "model": "fake-image-model", "kind": "images"},
        }
        role_map: dict[str, Any] = {
            "proposer": "fake",
            "judge": ["fake"],
            "targets": ["fake"],
            "text_guard": "fake-guard",
            "image_guard": "fake-guard",
            "vlm_checker": "fake",
            "text_checker": "fake",
            "images": "fake-images",
        }
        role_map.update(roles)
        if self.cache_dir is None:  # never litter the working directory
            self.cache_dir = Path(tempfile.mkdtemp(prefix="fake-openai-cache-"))
        cache_path = str(self.cache_dir / "requests.sqlite")
        return settings_from_dict(
            {"endpoints": endpoints, "roles": role_map, "cache": {"enabled": cache, "path": cache_path}},
            source="fake_openai.settings()",
        )

    # -- used by the handler ----------------------------------------------------------------------

    def _count(self, path: str, body: dict | None, auth: str | None = None) -> None:
        with self._lock:
            self.hits += 1
            self.hits_by_path[path.split("?")[0]] += 1
            if self.record_bodies:
                self.requests.append((path, body))
                self.auth_headers.append(auth)
            if body is not None:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _next_chat(self, body: dict) -> ChatReply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self._chat_fn(body)


def main(argv: list[str] | None = None) -> None:
    """`python -m generator.testing.fake_openai --port P --latency 0.1`: serve until interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    args = ap.parse_args(argv)
    FakeOpenAI(host=args.host, port=args.port, latency=args.latency).serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
