"""The review web app: a Starlette app over one run folder (`siuo review --run R --serve`).

Safety, because every case text is model-written and the page can write to the run:
- Jinja2 autoescapes every string, and a Content-Security-Policy allows only this app's own script file,
  so a question such as `<img src=x onerror=...>` is shown as text and runs nothing.
- Every form carries a CSRF token (an HMAC of the browser's session cookie under a secret made at start);
  a POST without the right one is refused, so another site cannot make a reviewer's browser decide.
- With `token`, every request must present it (once as `?token=`, then a cookie, or `Authorization:
  Bearer`); `serve` refuses a non-loopback host without one. Secrets are compared as UTF-8 bytes, so a
  non-ASCII token works and a non-ASCII guess is a plain refusal.
- Without a token, a request must be addressed to this server by a loopback name or address and the port
  it listens on (Host `127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`): a page on another site whose DNS
  name is rebound to 127.0.0.1 sends its own name as Host and is refused, so it cannot read cases or post.
- Every form carries the case revision it shows; a decision or edit on a revision that is no longer the
  latest gets a conflict page (the current text beside what was typed) and records nothing.
- No request parameter reaches the filesystem but through a known record key (a case or a render), and an
  image is served only when its real path lies inside the run folder.

Writes take the run lock (`RunStore.writing`) per decision, not for the server's lifetime: one server
serves several reviewers, and between their clicks `siuo accept` or `siuo answer` may run on the same run.
A decision made while another siuo process writes is refused with a page saying so (nothing is lost:
the reviewer clicks again). Inside the server, a thread lock orders the writes of concurrent requests.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import re
import secrets
import threading
from dataclasses import dataclass
from hashlib import sha256
from typing import Any
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from generator.cases import REJECT_REASONS, ReviewState, RevisionConflict, record_decision, record_edit, revised
from generator.errors import UserError
from generator.records import Case, CheckResult, Render, Review, Scenario
from generator.resources import review_app_dir
from generator.review.agreement import agreement
from generator.store import RunLockedError, RunStore

SESSION_COOKIE = "siuo_session"
REVIEWER_COOKIE = "siuo_reviewer"
TOKEN_COOKIE = "siuo_token"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
MAX_FIELD = 20_000
REVIEWER_NAME = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,40}$")
FILTERS = ("domain", "split", "checks", "status", "mine")
REVIEW_STATUSES = ("pending", "accepted", "rejected", "disputed")
CHECK_STATUSES = ("passed", "incomplete", "failed", "none")
DEFAULT_SPLITS = ("generated", "hardened")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_secret(given: str | bytes, expected: str) -> bool:
    """Constant-time equality of a presented secret and the expected one, as UTF-8 bytes:
    `hmac.compare_digest` raises TypeError on a non-ASCII str, which made a non-ASCII guess a 500 and a
    non-ASCII --token unusable."""
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, expected.encode("utf-8", "surrogatepass"))


def host_is_this_loopback_server(host_header: str | None, server: tuple[str, int] | None, scheme: str) -> bool:
    """Whether a Host header names this server as only a local browser would: `localhost` or a loopback
    IP literal, with the port the server listens on. Neither can be a name an attacker's DNS answers
    for, so a rebound page (Host: its own name) never passes."""
    if not host_header or not server:
        return False
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?", host_header)
    if m is None:
        return False
    name, port = m.group(1).lower(), m.group(2)
    if port is None:
        port = "443" if scheme == "https" else "80"
    if int(port) != server[1]:
        return False
    if name == "localhost":
        return True
    bracketed = name.startswith("[")
    try:
        address = ipaddress.ip_address(name[1:-1] if bracketed else name)
    except ValueError:
        return False
    return address.is_loopback and bracketed == (address.version == 6)


@dataclass
class CaseView:
    """One case as the pages show it: its latest revision and what the checks and reviewers said."""

    case: Case
    """The original record (its key is what decisions refer to)."""
    current: Case
    """The latest revision (the original when never edited)."""
    revision: int
    status: str
    check_status: str
    votes: dict[str, Review]

    @property
    def key(self) -> str:
        return self.case.key


class RunData:
    """Everything the pages read from the run, loaded per request (the files are small and the reviewers
    few, and another process may have appended since)."""

    def __init__(self, store: RunStore):
        self.store = store
        self.state = ReviewState.load(store)
        self.renders: dict[str, list[Render]] = {}
        for r in store.read(Render):
            self.renders.setdefault(r.scenario_id, []).append(r)
        self.checks: dict[str, list[CheckResult]] = {}
        for c in store.read_latest(CheckResult):
            self.checks.setdefault(c.scenario_id, []).append(c)
        self.views = [self._view(c) for c in store.read(Case)]
        self.by_key = {v.key: v for v in self.views}

    def _view(self, case: Case) -> CaseView:
        return CaseView(
            case=case,
            current=revised(case, self.state.latest_edit(case.key)),
            revision=self.state.revision(case.key),
            status=self.state.status(case.key),
            check_status=self.check_status(case),
            votes={who: r for who, r in self.state.decisions.get(case.key, {}).items()},
        )

    def case_checks(self, case: Case) -> list[CheckResult]:
        return sorted(
            self.checks.get(case.scenario_id or "", []),
            key=lambda c: (c.check, c.candidate if c.candidate is not None else -1),
        )

    def check_status(self, case: Case) -> str:
        """passed (every check of the case and its image passed) / failed (one did not: an optional check)
        / incomplete (one could not run) / none (no checks: e.g. the official split)."""
        candidate = case.provenance.get("render", {}).get("candidate")
        mine = [c for c in self.case_checks(case) if c.candidate is None or c.candidate == candidate]
        if not mine:
            return "none"
        if any(c.passed is False for c in mine):
            return "failed"
        if any(c.passed is None for c in mine):
            return "incomplete"
        return "passed"

    def scenario(self, key: str | None) -> Scenario | None:
        if not key:
            return None
        return next((s for s in self.store.read(Scenario) if s.key == key), None)

    def filtered(self, params: dict[str, str], reviewer: str | None) -> list[CaseView]:
        splits = {params["split"]} if params.get("split") else set(DEFAULT_SPLITS)
        out = []
        for v in self.views:
            if v.case.split not in splits:
                continue
            if params.get("domain") and v.case.domain != params["domain"]:
                continue
            if params.get("checks") and v.check_status != params["checks"]:
                continue
            if params.get("status") and v.status != params["status"]:
                continue
            if params.get("mine") == "todo" and reviewer and reviewer in v.votes:
                continue
            out.append(v)
        return out


class Guard(BaseHTTPMiddleware):
    """Access token, the session cookie the CSRF token is bound to, and the security headers."""

    async def dispatch(self, request: Request, call_next) -> Response:
        token: str | None = request.app.state.token
        if not token and not host_is_this_loopback_server(
            request.headers.get("host"), request.scope.get("server"), request.url.scheme
        ):
            port = (request.scope.get("server") or ("", "PORT"))[1]
            return _secured(
                HTMLResponse(
                    "<h1>400</h1><p>This review server answers only to a local address: open "
                    f"<code>http://127.0.0.1:{port}/</code> (or <code>localhost:{port}</code>). This request was "
                    f"addressed to <code>{html.escape(request.headers.get('host') or '(no Host)')}</code>, as a page "
                    "of another site pointed at this computer would be. To reach the server under another name "
                    "(a tunnel, a proxy), start it with --token.</p>",
                    400,
                )
            )
        if token:
            given = request.query_params.get("token")
            if given is not None and same_secret(given, token) and request.method == "GET":
                rest = {k: v for k, v in request.query_params.items() if k != "token"}
                response: Response = RedirectResponse(
                    _local_path(request.url.path) + (f"?{urlencode(rest)}" if rest else ""), 303
                )
                # percent-encoded: a cookie value is ASCII (a non-ASCII token could not be set otherwise)
                response.set_cookie(TOKEN_COOKIE, quote(token, safe=""), httponly=True, samesite="strict")
                return _secured(response)
            header = request.headers.get("authorization", "")
            if request.cookies.get(TOKEN_COOKIE):
                presented: str | bytes = unquote(request.cookies[TOKEN_COOKIE])
            else:  # headers arrive decoded as latin-1: their raw bytes are the token's UTF-8
                presented = header[7:].encode("latin-1", "replace") if header.startswith("Bearer ") else b""
            if not same_secret(presented, token):
                return _secured(
                    HTMLResponse(
                        "<h1>401</h1><p>This review server needs its access token: open the "
                        "address siuo printed (it ends in ?token=...).</p>",
                        401,
                    )
                )
        session = request.cookies.get(SESSION_COOKIE)
        fresh = not session or not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", session)
        if fresh or session is None:
            session = secrets.token_urlsafe(24)
        request.state.session = session
        response = await call_next(request)
        if fresh:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
        return _secured(response)


def _secured(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def create_app(store: RunStore, token: str | None = None) -> Starlette:
    """The review app for `store`; `token`, when given, is required of every request."""
    env = Environment(loader=FileSystemLoader(review_app_dir("templates")), autoescape=True)
    templates = Jinja2Templates(env=env)
    secret = secrets.token_bytes(32)
    write_guard = threading.Lock()

    def csrf_token(request: Request) -> str:
        return hmac.new(secret, request.state.session.encode(), sha256).hexdigest()

    def reviewer_of(request: Request) -> str | None:
        name = unquote(request.cookies.get(REVIEWER_COOKIE, ""))
        return name if REVIEWER_NAME.match(name) else None

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(reviewer=reviewer_of(request), csrf=csrf_token(request), run=store.name)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def error(request: Request, status_code: int, message: str) -> Response:
        return page(request, "error.html", status_code=status_code, message=message)

    async def checked_form(request: Request) -> dict[str, str] | None:
        """The posted form when its CSRF token is right, else None."""
        form = await request.form()
        given = str(form.get("csrf", ""))
        if not same_secret(given, csrf_token(request)):
            return None
        return {k: str(v) for k, v in form.items() if isinstance(v, str)}

    def filter_params(source) -> dict[str, str]:
        return {k: str(source.get(k)) for k in FILTERS if source.get(k)}

    def qs(params: dict[str, str]) -> str:
        return urlencode(params)

    def case_url(key: str, params: dict[str, str]) -> str:
        return f"/case/{quote(key, safe='')}" + (f"?{qs(params)}" if params else "")

    def next_pending(
        data: RunData, params: dict[str, str], reviewer: str | None, after: str | None = None
    ) -> str | None:
        """The next case (after `after`, wrapping round) this reviewer has not decided in the filtered queue."""
        views = data.filtered({**params, "mine": ""}, reviewer)
        keys = [v.key for v in views]
        start = keys.index(after) + 1 if after in keys else 0
        for v in views[start:] + views[:start]:
            if v.key != after and (reviewer is None or reviewer not in v.votes):
                return v.key
        return None

    # -- pages ----------------------------------------------------------------------------------------

    async def queue(request: Request) -> Response:
        data = RunData(store)
        params = filter_params(request.query_params)
        reviewer = reviewer_of(request)
        shown = data.filtered(params, reviewer)
        in_splits = data.filtered({"split": params.get("split", "")}, None)
        counts = {
            "domain": _count(v.case.domain for v in in_splits),
            "split": _count(v.case.split for v in data.views),
            "checks": _count(v.check_status for v in in_splits),
            "status": _count(v.status for v in in_splits),
        }
        todo = sum(1 for v in in_splits if reviewer and reviewer not in v.votes)
        return page(
            request,
            "queue.html",
            cases=shown,
            params=params,
            qs=qs(params),
            counts=counts,
            todo=todo,
            total=len(in_splits),
            statuses=REVIEW_STATUSES,
            check_statuses=CHECK_STATUSES,
            next_key=next_pending(data, params, reviewer),
            case_url=case_url,
            message=request.query_params.get("done") and "Nothing left to review in this queue.",
        )

    async def next_case(request: Request) -> Response:
        params = filter_params(request.query_params)
        key = next_pending(RunData(store), params, reviewer_of(request), request.query_params.get("after"))
        if key is None:
            return RedirectResponse("/?" + qs({**params, "done": "1"}), 303)
        return RedirectResponse(case_url(key, params), 303)

    async def case_page(request: Request) -> Response:
        data = RunData(store)
        view = data.by_key.get(request.path_params["key"])
        if view is None:
            return error(request, 404, "No such case in this run.")
        params = filter_params(request.query_params)
        reviewer = reviewer_of(request)
        order = [v.key for v in data.filtered({**params, "mine": ""}, reviewer)]
        i = order.index(view.key) if view.key in order else -1
        prev_key = order[i - 1] if i > 0 else None
        next_key = order[i + 1] if 0 <= i < len(order) - 1 else None
        candidates = sorted(data.renders.get(view.case.scenario_id or "", []), key=lambda r: r.candidate)
        parent = data.scenario(view.case.parent_id)
        parent_case = f"case-gen-{view.case.parent_id}" if view.case.parent_id else None
        return page(
            request,
            "case.html",
            view=view,
            c=view.current,
            params=params,
            qs=qs(params),
            checks=data.case_checks(view.case),
            candidates=candidates,
            parent=parent,
            parent_url=case_url(parent_case, {}) if parent_case in data.by_key else None,
            prev_url=case_url(prev_key, params) if prev_key else None,
            next_url=case_url(next_key, params) if next_key else None,
            position=(i + 1, len(order)),
            reasons=REJECT_REASONS,
            edits=data.state.edits.get(view.key, []),
            case_url=case_url,
            flash=request.query_params.get("saved"),
        )

    async def summary(request: Request) -> Response:
        data = RunData(store)
        per_reviewer: dict[str, dict[str, int]] = {}
        for by in data.state.decisions.values():
            for who, r in by.items():
                per_reviewer.setdefault(who, {"accept": 0, "reject": 0, "skip": 0, "edit": 0})[r.decision] += 1
        for edits in data.state.edits.values():
            for e in edits:
                per_reviewer.setdefault(e.reviewer, {"accept": 0, "reject": 0, "skip": 0, "edit": 0})["edit"] += 1
        votes = {
            case: {who: r.decision for who, r in by.items() if r.decision != "skip"}
            for case, by in data.state.decisions.items()
            if case in data.by_key
        }
        agree = agreement({k: v for k, v in votes.items() if v})
        return page(
            request,
            "summary.html",
            per_reviewer=dict(sorted(per_reviewer.items())),
            agree=agree,
            disagreements=[data.by_key[k] for k in agree.disagreements],
            case_url=case_url,
            reasons=REJECT_REASONS,
        )

    async def reviewer_page(request: Request) -> Response:
        target = _local_path(request.query_params.get("next", "/"))
        if request.method == "POST":
            form = await checked_form(request)
            if form is None:
                return error(
                    request, 403, "This form expired (CSRF token missing or wrong): reload the page and try again."
                )
            name = form.get("name", "").strip()
            target = _local_path(form.get("next", "/"))
            if not REVIEWER_NAME.match(name):
                return page(
                    request,
                    "reviewer.html",
                    status_code=400,
                    next=target,
                    problem="A name is 1 to 40 characters, without control characters.",
                )
            response = RedirectResponse(target, 303)
            response.set_cookie(
                REVIEWER_COOKIE, quote(name, safe=""), max_age=365 * 24 * 3600, httponly=True, samesite="strict"
            )
            return response
        return page(request, "reviewer.html", next=target, problem=None)

    # -- writes ---------------------------------------------------------------------------------------

    def locked_write(fn, *args, **kwargs):
        """Run one write under the server's thread lock and the run lock, taken for this write alone."""
        with write_guard, store.writing(wait=False):
            return fn(store, *args, **kwargs)

    async def write(request: Request, attempt: dict[str, Any], fn, *args, **kwargs) -> Response | None:
        """Record one decision or edit; a page saying why when it was not (`attempt`: what the reviewer
        sent, shown again on a conflict so nothing they typed is lost)."""
        try:
            await run_in_threadpool(locked_write, fn, *args, **kwargs)
        except RunLockedError as exc:
            return error(request, 409, f"Not saved: {exc}. Try again in a moment.")
        except RevisionConflict as exc:
            return conflict(request, exc.case_key, attempt)
        except UserError as exc:
            return error(request, 400, str(exc))
        return None

    def conflict(request: Request, key: str, attempt: dict[str, Any]) -> Response:
        """409: the case as it is now, beside what the reviewer tried to record on an older revision, with
        forms to record it again on the current one (knowingly)."""
        data = RunData(store)
        view = data.by_key.get(key)
        if view is None:
            return error(request, 404, "No such case in this run.")
        newer = [e for e in data.state.edits.get(key, []) if e.revision > attempt["base"]]
        return page(
            request,
            "conflict.html",
            status_code=409,
            view=view,
            c=view.current,
            attempt=attempt,
            newer=newer,
            params=attempt["params"],
            reasons=REJECT_REASONS,
            case_url=case_url,
        )

    async def prepare_post(request: Request) -> tuple[dict[str, str], CaseView, str, RunData, int] | Response:
        form = await checked_form(request)
        if form is None:
            return error(
                request, 403, "This form expired (CSRF token missing or wrong): reload the page and try again."
            )
        reviewer = reviewer_of(request)
        if reviewer is None:
            return error(request, 403, "Name yourself first (top right) so your decisions carry your name.")
        if not re.fullmatch(r"[0-9]{1,9}", form.get("revision", "")):
            return error(
                request,
                400,
                "This form does not say which revision of the case it showed (a page from an "
                "older version of the app?): reload the case and try again.",
            )
        data = RunData(store)
        view = data.by_key.get(request.path_params["key"])
        if view is None:
            return error(request, 404, "No such case in this run.")
        return form, view, reviewer, data, int(form["revision"])

    async def decide(request: Request) -> Response:
        prepared = await prepare_post(request)
        if isinstance(prepared, Response):
            return prepared
        form, view, reviewer, data, base = prepared
        decision = form.get("decision", "")
        reason = form.get("reason") or None
        if decision == "reject" and reason is None:
            return error(request, 400, "Pick a reason to reject.")
        note = form.get("note", "")[:MAX_FIELD]
        attempt = {
            "kind": "decision",
            "base": base,
            "params": filter_params(form),
            "decision": decision,
            "reason": reason,
            "note": note,
        }
        failed = await write(
            request,
            attempt,
            record_decision,
            view.key,
            reviewer,
            decision,
            reason=reason,
            note=note,
            base_revision=base,
        )
        if failed:
            return failed
        return RedirectResponse("/next?" + qs({**filter_params(form), "after": view.key}), 303)

    async def edit(request: Request) -> Response:
        prepared = await prepare_post(request)
        if isinstance(prepared, Response):
            return prepared
        form, view, reviewer, data, base = prepared
        fields = {
            k: form[k].replace("\r\n", "\n").strip() for k in ("question", "hazard", "reference_answer") if k in form
        }
        if any(len(v) > MAX_FIELD for v in fields.values()) or not all(fields.values()):
            return error(request, 400, "Question, hazard and reference answer must each be 1 to 20,000 characters.")
        render = None
        if form.get("render_key"):
            render = next(
                (r for r in data.renders.get(view.case.scenario_id or "", []) if r.key == form["render_key"]), None
            )
            if render is None:
                return error(request, 400, "That image is not a candidate of this case.")
        note = form.get("note", "")[:MAX_FIELD]
        attempt = {
            "kind": "edit",
            "base": base,
            "params": filter_params(form),
            "fields": fields,
            "render": render,
            "note": note,
        }
        failed = await write(
            request, attempt, record_edit, view.case, reviewer, render=render, note=note, base_revision=base, **fields
        )
        if failed:
            return failed
        params = filter_params(form)
        return RedirectResponse(case_url(view.key, {**params, "saved": "1"}), 303)

    # -- images ---------------------------------------------------------------------------------------

    def serve_image(stored: str | None) -> Response:
        """The file a record names, only when its real path is an image inside the run folder."""
        if not stored:
            return Response("no image", 404)
        path = store.resolve(stored).resolve()
        base = store.path.resolve()
        if base not in path.parents or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            return Response("not served", 404)
        return FileResponse(path)

    async def case_image(request: Request) -> Response:
        view = RunData(store).by_key.get(request.path_params["key"])
        return serve_image(view.current.image_path if view else None)

    async def render_image(request: Request) -> Response:
        render = next((r for r in store.read(Render) if r.key == request.path_params["key"]), None)
        return serve_image(render.path if render else None)

    app = Starlette(
        routes=[
            Route("/", queue),
            Route("/next", next_case),
            Route("/case/{key}", case_page),
            Route("/case/{key}/decide", decide, methods=["POST"]),
            Route("/case/{key}/edit", edit, methods=["POST"]),
            Route("/image/case/{key}", case_image),
            Route("/image/render/{key}", render_image),
            Route("/summary", summary),
            Route("/reviewer", reviewer_page, methods=["GET", "POST"]),
            Mount("/static", StaticFiles(directory=review_app_dir("static")), name="static"),
        ],
        middleware=[Middleware(Guard)],
    )
    app.state.token = token
    return app


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _local_path(target: str) -> str:
    """A redirect target inside this app (a path, never another host)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def serve(store: RunStore, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise UserError(
            f"--host {host} is reachable from other machines: pass --token SECRET too "
            "(every request must then present it)"
        )
    uvicorn.run(create_app(store, token), host=host, port=port, log_level="warning")
