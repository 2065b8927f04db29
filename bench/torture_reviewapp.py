"""Torture probes of the review web app as `siuo review --serve` runs it (issue 20, items 6-8): a page of
another site rebinding its DNS name to 127.0.0.1, non-ASCII secrets, and two reviewers saving one case from
pages of different ages. Each probe talks HTTP to the real server in a subprocess."""

from __future__ import annotations

import http.client
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from generator.cases import ReviewState
from generator.records import Case, Review
from generator.testing.review_run import free_port, make_review_run


class Browser:
    """Just enough of a browser: one cookie jar, Host header as a browser at `host` would send it."""

    def __init__(self, port: int, host: str | None = None):
        self.port, self.host, self.cookies = port, host or f"127.0.0.1:{port}", {}

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = raw if raw is not None else (urlencode(form).encode() if form is not None else None)
        sent = {"Host": self.host, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        for name, value in r.getheaders():
            if name.lower() == "set-cookie":
                k, _, v = value.split(";")[0].partition("=")
                self.cookies[k.strip()] = v.strip()
        conn.close()
        return r.status, text, dict(r.getheaders())

    def hidden(self, path: str, form_id: str) -> dict[str, str]:
        page = self.request("GET", path)[1]
        form = page[page.index(f'id="{form_id}"') :]
        return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form[: form.index("</form>")]))

    def name(self, who: str) -> None:
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', self.request("GET", "/reviewer")[1]).group(1)
        self.request("POST", "/reviewer", {"csrf": csrf, "name": who, "next": "/"})


def _serve(t, run: str, port: int, *extra: str):
    proc = t.spawn("review", "--run", run, "--serve", "--port", str(port), *extra)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"siuo review --serve exited: {proc.stderr.read()[-500:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("siuo review --serve did not start in 30 s")


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def probes(t) -> None:
    part = "review app"
    root = Path(t.env["SIUO_OUTPUTS"])
    store = make_review_run(root, name="review-probe", cases=2, hostile_question=False)
    case = store.read(Case)[0]
    port = free_port()
    proc = _serve(t, "review-probe", port)
    try:
        # 6. DNS rebinding: the attacker's page sends its own name as Host.
        status, body, _ = Browser(port, host=f"attacker.example:{port}").request("GET", f"/case/{case.key}")
        t.record(
            part,
            "Host: attacker.example (DNS rebinding) on loopback, no token",
            f"HTTP {status}",
            status == 400 and case.question not in body,
        )

        # 8. a non-ASCII CSRF value: refused, never a server error.
        ana = Browser(port)
        ana.name("ana")
        status = ana.request(
            "POST", f"/case/{case.key}/decide", raw=f"csrf={quote('é' * 64)}&decision=accept&revision=0".encode()
        )[0]
        t.record(part, "non-ASCII CSRF value", f"HTTP {status}", status == 403)

        # 7. two reviewers, one case: bo saves from the page he opened before ana's edit.
        bo = Browser(port)
        bo.name("bo")
        ana_form = ana.hidden(f"/case/{case.key}", "edit-form")
        bo_form = bo.hidden(f"/case/{case.key}", "edit-form")
        texts = {"hazard": case.hazard or "h", "reference_answer": case.reference_answer}
        first = ana.request("POST", f"/case/{case.key}/edit", {**ana_form, **texts, "question": "ana's revision"})[0]
        stale = bo.request("POST", f"/case/{case.key}/edit", {**bo_form, **texts, "question": "bo's old page"})
        accept = bo.request("POST", f"/case/{case.key}/decide", {**bo_form, "decision": "accept"})[0]
        state = ReviewState.load(store)
        held = (
            first == 303
            and stale[0] == 409
            and "bo&#39;s old page" in stale[1]
            and accept == 409
            and state.latest_edit(case.key).question == "ana's revision"
            and not state.decisions
        )
        t.record(
            part,
            "save and accept from a page older than a colleague's edit",
            f"edit HTTP {stale[0]}, accept HTTP {accept}; {len(store.read(Review))} review record(s)",
            held,
        )
    finally:
        _stop(proc)

    # 8. a non-ASCII --token: usable through ?token=, then the cookie; a wrong one is a 401.
    token = "clé-ünïcode-秘密"
    port = free_port()
    proc = _serve(t, "review-probe", port, "--token", token)
    try:
        b = Browser(port)
        wrong = b.request("GET", "/?token=" + quote("clé-ünïcode-秘", safe=""))[0]
        first = b.request("GET", "/?token=" + quote(token, safe=""))[0]
        then = b.request("GET", "/")[0]
        t.record(
            part,
            "non-ASCII --token",
            f"wrong HTTP {wrong}, right HTTP {first} then {then}",
            (wrong, first, then) == (401, 303, 200),
        )
    finally:
        _stop(proc)
