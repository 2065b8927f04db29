"""Report stage: report.md and a self-contained report.html from a run's scores.

The HTML file carries its plots as inline base64 PNGs (one file to mail or archive). Every piece of
model text (responses, judge replies) and every name is HTML-escaped: a response is untrusted text and
must not run in the reader's browser. In the Markdown, model text sits in code fences longer than any
run of backticks it contains, so it cannot break out either.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from generator.cases import reviewed_cases
from generator.domains import load_domains
from generator.evaluate.common import stream_jsonl
from generator.evaluate.score import (
    LEFT_OUT,
    SCORES_FILE,
    VERDICT_RULE_COLUMNS,
    fmt_rate,
    leaderboard_rows,
    load_scores,
    score,
    verdict_rule_rows,
)
from generator.evaluate.scores_model import FormScores, GenGroup, Rate, Scores, TargetScores
from generator.records import Case, Judgment, Render, Response
from generator.store import RunStore, StoreError, write_text_atomic
from generator.terminal import shown

#: Published SIUO results on the 167 official cases (project leaderboard, human-evaluated, percent):
#: Safe, Effective, Safe & Effective, MCQA accuracy. Shown for context only; not computed here.
SIUO_REFERENCE = [
    ("GPT-4V", 53.29, 69.46, 23.35, 38.92),
    ("GPT-4o", 50.90, 95.81, 46.71, 41.32),
    ("Gemini 1.5 Pro", 52.10, 91.62, 45.51, 47.31),
    ("LLaVA-1.6-34B", 40.72, 95.81, 37.13, 52.69),
    ("Qwen-VL-7B-Chat", 41.32, 82.63, 29.94, 20.96),
    ("LLaVA-1.5-7B", 21.56, 87.43, 16.17, 33.53),
]
SIUO_RANDOM_MCQA = 24.95
METRIC_LABELS = {"safe": "Safe", "effective": "Effective", "safe_effective": "Safe & effective"}
EXAMPLE_TEXT_LIMIT = 2000


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(r: Rate | None) -> float | None:
    return None if r is None or r.rate is None else 100 * r.rate


# ----------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg canvas: no display, no global pyplot state)
# ----------------------------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _grouped_bars(ax, groups: list[str], series: dict[str, list[Rate | None]], title: str, ylabel: str = "%") -> None:
    """Bars of rates grouped by `groups`, one colour per series, with the Wilson interval as an error bar."""
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, rates) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        values = [_pct(r) or 0.0 for r in rates]
        lower = [max(0.0, v - 100 * r.ci_low) if r and r.ci_low is not None else 0.0 for v, r in zip(values, rates)]
        upper = [max(0.0, 100 * r.ci_high - v) if r and r.ci_high is not None else 0.0 for v, r in zip(values, rates)]
        ax.bar(xs, values, width=width, label=name, yerr=[lower, upper], capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _gen_of(t: TargetScores, split: str) -> FormScores[GenGroup] | None:
    """A target's open-answer figures on one split (None when it answered none there)."""
    forms = t.splits.get(split)
    return forms.gen if forms else None


def domain_plot(scores: Scores, split: str) -> bytes | None:
    """Per-domain safe / effective / safe-and-effective rates of each target on one split."""
    names = {d.id: d.name for d in load_domains()}
    domains: list[str] = []
    for t in scores.targets.values():
        gen = _gen_of(t, split)
        for dom in gen.domains if gen else {}:
            if dom not in domains:
                domains.append(dom)
    if not domains:
        return None
    fig = Figure(figsize=(max(7, 0.8 * len(domains) + 3), 8))
    axes = fig.subplots(3, 1)
    for ax, metric in zip(axes, METRIC_LABELS):
        series = {}
        for target, t in scores.targets.items():
            gen = _gen_of(t, split)
            doms = gen.domains if gen else {}
            series[target] = [_metric(doms.get(d), metric) for d in domains]
        _grouped_bars(ax, [names.get(d, d) for d in domains], series, f"{METRIC_LABELS[metric]} by domain ({split})")
    for ax in axes[:-1]:
        ax.set_xticklabels([])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _metric(group: GenGroup | None, metric: str) -> Rate | None:
    """One of the three open-answer rates (`METRIC_LABELS`) of a group, None when there is no group."""
    return getattr(group, metric) if group else None


def _gen_splits(scores: Scores) -> list[str]:
    """The splits some target answered open questions on, in the order the targets list them."""
    splits: list[str] = []
    for t in scores.targets.values():
        for s, forms in t.splits.items():
            if forms.gen and s not in splits:
                splits.append(s)
    return splits


def split_plot(scores: Scores) -> bytes | None:
    """Original vs generated vs hardened splits, side by side per target, for the three rates."""
    splits = _gen_splits(scores)
    if not splits:
        return None
    targets = list(scores.targets)
    fig = Figure(figsize=(max(7, 2.2 * len(targets) + 3), 4))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, METRIC_LABELS):
        series = {}
        for s in splits:
            gens = [_gen_of(scores.targets[t], s) for t in targets]
            series[s] = [_metric(gen.overall if gen else None, metric) for gen in gens]
        _grouped_bars(ax, targets, series, METRIC_LABELS[metric])
    axes[0].legend(fontsize=8, title="split")
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------------------------------
# Examples (texts fetched by streaming, only for the chosen responses)
# ----------------------------------------------------------------------------------------------------


def load_examples(store: RunStore, scores: Scores) -> list[dict[str, Any]]:
    """The example responses scores.json names, with their question, text and judge replies."""
    wanted = {e.response_key: e.model_dump() for e in scores.examples}
    if not wanted:
        return []
    case_ids = {e["case_id"] for e in wanted.values()}
    questions: dict[str, dict[str, Any]] = {}
    for _, obj in stream_jsonl(store.file_for(Case)):
        if obj.get("key") in case_ids:
            questions[obj["key"]] = obj
    if case_ids - questions.keys():  # edited cases answer under their revised key (`<key>@r<n>`)
        for c in reviewed_cases(store):
            if c.key in case_ids:
                questions[c.key] = c.model_dump()
    for _, obj in stream_jsonl(store.file_for(Response)):
        if obj.get("key") in wanted:
            wanted[obj["key"]]["text"] = obj.get("text") or ""
    for _, obj in stream_jsonl(store.file_for(Judgment)):
        e = wanted.get(obj.get("response_key") or "")
        if e is not None:
            e.setdefault("judge_replies", {})[f"{obj.get('dimension')} / {obj.get('judge')}"] = (
                obj.get("verdict"),
                obj.get("raw") or "",
            )
    out = []
    for e in wanted.values():
        q = questions.get(e["case_id"], {})
        e["question"] = q.get("question", "")
        e["hazard"] = q.get("hazard") or q.get("safety_warning", "")
        e["question_id"] = q.get("question_id", e["case_id"])
        out.append(e)
    return out


def _clip(text: str, limit: int = EXAMPLE_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


# ----------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------


_MD_INLINE = re.compile(r"([\\`*\[\]~])")
"""Markdown punctuation that makes emphasis, code spans, links or strikethrough out of plain text (`_` is
left alone: within a word, as in names, it is never emphasis, and escaped it would show in plain readers)."""


def _md_cell(value: Any) -> str:
    """Text for a Markdown table cell or heading: no raw HTML, no column breaks, one line, no control
    characters (shown escaped), no markup (a target named `[x](http://…)` stays text, never a link)."""
    text = shown(str(value)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_INLINE.sub(r"\\\1", text)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_fenced(text: str) -> str:
    """Untrusted text as a code block: fenced longer than any backtick run in it (it cannot close the
    fence), control characters shown escaped (they would reach the terminal of whoever `cat`s the file)."""
    text = shown(text.replace("\r\n", "\n"))
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _leaderboard(scores: Scores) -> tuple[list[str], list[list[Any]]]:
    header = [
        "target",
        "model",
        "split",
        "cases",
        "safe",
        "effective",
        "safe & effective",
        "MCQA acc.",
        "over-refusal",
        "excluded",
    ]
    rows = [
        [
            r.target,
            r.model,
            r.split,
            r.cases,
            fmt_rate(r.safe),
            fmt_rate(r.effective),
            fmt_rate(r.safe_effective),
            fmt_rate(r.mcqa),
            fmt_rate(r.over_refusal),
            r.excluded,
        ]
        for r in leaderboard_rows(scores)
    ]
    return header, rows


def _domain_tables(scores: Scores) -> list[tuple[str, list[str], list[list[Any]]]]:
    names = {d.id: d.name for d in load_domains()}
    out = []
    for target, t in scores.targets.items():
        for split, forms in t.splits.items():
            gen = forms.gen
            if not gen or not gen.domains:
                continue
            rows = [
                [names.get(dom, dom), d.cases, fmt_rate(d.safe), fmt_rate(d.effective), fmt_rate(d.safe_effective)]
                for dom, d in gen.domains.items()
            ]
            out.append((f"{target} on {split}", ["domain", "cases", "safe", "effective", "safe & effective"], rows))
    return out


def _agreement_rows(scores: Scores) -> list[list[Any]]:
    rows = []
    for dim, a in scores.agreement.items():
        kappa = "-" if a.kappa is None else f"{a.kappa:.3f}"
        pa = "-" if a.percent_agreement is None else f"{100 * a.percent_agreement:.1f}%"
        rows.append([dim, ", ".join(a.judges), f"{a.method}'s kappa", kappa, pa, a.items])
    return rows


def _models_rows(store: RunStore, scores: Scores) -> list[list[str]]:
    manifest = store.load_manifest()
    rows = [[role, model] for role, model in sorted(manifest.models.items())]
    seen = {r[0] for r in rows}
    for target, t in scores.targets.items():
        if f"target:{target}" not in seen:
            rows.append([f"target:{target}", t.model])
    for judges in scores.judges.values():
        for judge, model in judges.items():
            if f"judge:{judge}" not in seen:
                rows.append([f"judge:{judge}", model])
                seen.add(f"judge:{judge}")
    return rows


def _validity_rows(scores: Scores) -> list[list[Any]]:
    rows = []
    for dim, counts in scores.verdict_counts.items():
        rows.append([dim] + [counts.get(k, 0) for k in LEFT_OUT])
    return rows


def _rules_note(scores: Scores) -> str:
    """One sentence on the verdicts decided by rule: untrusted ones against the model, ties as configured."""
    ties = scores.verdict_rules.ties if scores.verdict_rules else "unsafe"
    return (
        "Untrusted verdicts (no valid verdict line with its token after the re-asks) count against the model; "
        f"judge ties: {'counted against the model' if ties == 'unsafe' else 'left out of the majority'} (ties = {ties})."
    )


def _protocol_label(scores: Scores) -> str:
    """The title's protocol: the run's numbers mean what that protocol measures."""
    return f"protocol {scores.protocol or 'unrecorded'}"


def _missing_images(scores: Scores) -> dict[str, int]:
    """Split -> cases skipped for a missing image (splits with none left out)."""
    return {s: c.missing_image for s, c in scores.cases.items() if c.missing_image}


REFERENCE_HEADER = ["model (published)", "safe %", "effective %", "safe & effective %", "MCQA acc. %"]


def check_notices(store: RunStore) -> list[str]:
    """Plain sentences for the top of the report: checks that did not run (from filter_report.json), and,
    when any did not run or images came from the packaged photo pool, that the cases are a demonstration."""
    path = store.path / "filter_report.json"
    not_run = json.loads(path.read_text(encoding="utf-8")).get("not_run", {}) if path.is_file() else {}
    notes = [f"Check {name} did NOT RUN ({why}); it is not counted as a pass." for name, why in sorted(not_run.items())]
    blind = sorted({r.target for r in store.iter_records(Response) if not r.image_sent})
    if blind:
        notes.append(
            f"Target(s) {', '.join(blind)} take no images: they answered the questions alone, so their "
            "scores are not a SIUO evaluation."
        )
    if not_run or blind or any(r.source for r in store.read(Render)):
        notes.append(
            "These cases are a demonstration of the pipeline, not a benchmark: checks did not all run "
            "and/or images were picked from the small packaged photo pool by caption text."
        )
    return notes


def render_markdown(store: RunStore, scores: Scores, examples: list[dict[str, Any]]) -> str:
    parts = [
        f"# SIUO evaluation report ({_protocol_label(scores)}): run {_md_cell(scores.run)}",
        "",
        f"Scored {scores.created}. Rates with 95% Wilson intervals.",
        "",
    ]
    notices = check_notices(store)
    parts += [f"> **{_md_cell(n)}**" for n in notices] + ([""] if notices else [])
    header, rows = _leaderboard(scores)
    parts += ["## Leaderboard", "", _md_table(header, rows), ""]
    parts += ["Plots (per domain, split comparison) are in report.html.", ""]
    for title, header, rows in _domain_tables(scores):
        parts += [f"## Per domain: {_md_cell(title)}", "", _md_table(header, rows), ""]
    parts += ["## Models", "", _md_table(["role", "model"], _models_rows(store, scores)), ""]
    if scores.agreement:
        parts += [
            "## Judge agreement",
            "",
            _md_table(["dimension", "judges", "method", "kappa", "agreement", "items"], _agreement_rows(scores)),
            "",
        ]
    parts += [
        "## Left out of majorities (never counted as safe)",
        "",
        _md_table(["dimension", *LEFT_OUT], _validity_rows(scores)),
        "",
    ]
    parts += [
        "## Verdicts decided by rule",
        "",
        _md_cell(_rules_note(scores)),
        "",
        _md_table(list(VERDICT_RULE_COLUMNS), verdict_rule_rows(scores)),
        "",
    ]
    missing = _missing_images(scores)
    if missing:
        parts += [
            "Cases skipped for a missing image: " + ", ".join(f"{_md_cell(s)}: {n}" for s, n in missing.items()),
            "",
        ]
    parts += ["## Examples", ""]
    for e in examples:
        parts += [
            f"### {_md_cell(e['kind'])}: {_md_cell(e['target'])}, case {_md_cell(e['question_id'])}, sample {e['sample']}",
            "",
            f"Safety: {_md_cell(e['safety'])}; effectiveness: {_md_cell(e['effectiveness'])}",
            "",
            "Question:",
            "",
            _md_fenced(e["question"]),
            "",
            "Response:",
            "",
            _md_fenced(_clip(e.get("text", ""))),
            "",
        ]
        for who, (verdict, raw) in sorted(e.get("judge_replies", {}).items()):
            parts += [f"Judge {_md_cell(who)}: {_md_cell(verdict)}", "", _md_fenced(_clip(raw, 800)), ""]
    parts += _calibration_markdown(store)
    parts += _difficulty_markdown(store, scores)
    parts += (
        [
            "## Published SIUO figures (for context)",
            "",
            _md_table(
                REFERENCE_HEADER, [list(r) for r in SIUO_REFERENCE] + [["random choice", "", "", "", SIUO_RANDOM_MCQA]]
            ),
            "",
            "Source: the SIUO project leaderboard (human-evaluated, 167 official cases).",
            "",
            "## Scoring rules",
            "",
        ]
        + [f"- **{_md_cell(k)}**: {_md_cell(v)}" for k, v in scores.rules.items()]
        + [""]
    )
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;font-size:0.9em}
th{background:#f3f3f3;text-align:left}td{text-align:right}td:first-child{text-align:left}
pre{white-space:pre-wrap;background:#f8f8f8;border:1px solid #e2e2e2;padding:8px;font-size:0.85em;max-height:24em;overflow:auto}
.example{border-left:4px solid #999;padding-left:1em;margin:1em 0}.unsafe{border-color:#c0392b}
.safe_effective{border-color:#27ae60}.unparsable{border-color:#e67e22}img{max-width:100%}
.note{color:#666;font-size:0.9em}
"""


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def render_html(store: RunStore, scores: Scores, examples: list[dict[str, Any]]) -> str:
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>SIUO report ({_e(_protocol_label(scores))}): {_e(scores.run)}</title><style>{_CSS}</style></head><body>",
        f"<h1>SIUO evaluation report ({_e(_protocol_label(scores))}): run {_e(scores.run)}</h1>",
        f'<p class="note">Scored {_e(scores.created)}. Rates with 95% Wilson intervals.</p>',
        *(f"<p><strong>{_e(n)}</strong></p>" for n in check_notices(store)),
        "<h2>Leaderboard</h2>",
        _html_table(*_leaderboard(scores)),
    ]
    out.append("<h2>Per domain</h2>")
    for s in _gen_splits(scores):
        out.append(_html_img(domain_plot(scores, s), f"per-domain rates on {s}"))
    for title, header, rows in _domain_tables(scores):
        out += [f"<h3>{_e(title)}</h3>", _html_table(header, rows)]
    out += ["<h2>Split comparison</h2>", _html_img(split_plot(scores), "split comparison")]
    out += ["<h2>Models</h2>", _html_table(["role", "model"], _models_rows(store, scores))]
    if scores.agreement:
        out += [
            "<h2>Judge agreement</h2>",
            _html_table(["dimension", "judges", "method", "kappa", "agreement", "items"], _agreement_rows(scores)),
        ]
    out += [
        "<h2>Left out of majorities</h2>",
        '<p class="note">Never counted as safe (see the scoring rules).</p>',
        _html_table(["dimension", *LEFT_OUT], _validity_rows(scores)),
    ]
    out += [
        "<h2>Verdicts decided by rule</h2>",
        f'<p class="note">{_e(_rules_note(scores))}</p>',
        _html_table(list(VERDICT_RULE_COLUMNS), verdict_rule_rows(scores)),
    ]
    missing = _missing_images(scores)
    if missing:
        out.append(
            "<p>Cases skipped for a missing image: " + _e(", ".join(f"{s}: {n}" for s, n in missing.items())) + "</p>"
        )
    out.append("<h2>Examples</h2>")
    for e in examples:
        out += [
            f'<div class="example {_e(e["kind"])}">',
            f"<h3>{_e(e['kind'])}: {_e(e['target'])}, case {_e(e['question_id'])}, sample {_e(e['sample'])}</h3>",
            f"<p>Safety: <b>{_e(e['safety'])}</b>; effectiveness: <b>{_e(e['effectiveness'])}</b></p>",
            f"<p>Question:</p><pre>{_e(e['question'])}</pre>",
            f"<p>Safety warning:</p><pre>{_e(e['hazard'])}</pre>",
            f"<p>Response:</p><pre>{_e(_clip(e.get('text', '')))}</pre>",
        ]
        for who, (verdict, raw) in sorted(e.get("judge_replies", {}).items()):
            out.append(
                f"<details><summary>Judge {_e(who)}: {_e(verdict)}</summary><pre>{_e(_clip(raw, 800))}</pre></details>"
            )
        out.append("</div>")
    out += _calibration_html(store)
    out += _difficulty_html(store, scores)
    ref_rows = [list(r) for r in SIUO_REFERENCE] + [["random choice", "", "", "", SIUO_RANDOM_MCQA]]
    out += [
        "<h2>Published SIUO figures (for context)</h2>",
        _html_table(REFERENCE_HEADER, ref_rows),
        '<p class="note">Source: the SIUO project leaderboard (human-evaluated, 167 official cases); not computed by this run.</p>',
        "<h2>Scoring rules</h2><ul>",
    ]
    out += [f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in scores.rules.items()]
    out += ["</ul></body></html>"]
    return "\n".join(out)


def _difficulty_markdown(store: RunStore, scores: Scores) -> list[str]:
    """The "Difficulty" section (generator.evaluate.difficulty), when the run has figures for it."""
    from generator.evaluate.difficulty import difficulty_tables

    tables = difficulty_tables(store, scores)
    parts = ["## Difficulty", ""] if tables else []
    for title, header, rows in tables:
        parts += [f"### {_md_cell(title)}", "", _md_table(header, rows), ""]
    return parts


def _difficulty_html(store: RunStore, scores: Scores) -> list[str]:
    from generator.evaluate.difficulty import difficulty_tables, fool_rate_plot

    tables = difficulty_tables(store, scores)
    out = ["<h2>Difficulty</h2>", _html_img(fool_rate_plot(store), "search fool rate per round")] if tables else []
    for title, header, rows in tables:
        out += [f"<h3>{_e(title)}</h3>", _html_table(header, rows)]
    return out


def _calibration_markdown(store: RunStore) -> list[str]:
    """The `siuo calibrate` figures, when the run has them."""
    from generator.checks.calibrate import MEANING, curve_tables, input_lines, load_calibration, summary_table

    cal = load_calibration(store)
    if cal is None:
        return []
    parts = [
        "## Check calibration",
        "",
        f"Measured {_md_cell(cal['created'])}. " + _md_cell(MEANING.format(target=100 * cal["target"])),
        "",
    ]
    parts += [f"- {_md_cell(line)}" for line in input_lines(cal)] + ["", _md_table(*summary_table(cal)), ""]
    for title, header, rows in curve_tables(cal):
        parts += [f"### Threshold curve: {_md_cell(title)}", "", _md_table(header, rows), ""]
    return parts


def _calibration_html(store: RunStore) -> list[str]:
    from generator.checks.calibrate import MEANING, curve_tables, input_lines, load_calibration, summary_table

    cal = load_calibration(store)
    if cal is None:
        return []
    out = [
        "<h2>Check calibration</h2>",
        f'<p class="note">Measured {_e(cal["created"])}. {_e(MEANING.format(target=100 * cal["target"]))}</p>',
        "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in input_lines(cal)) + "</ul>",
        _html_table(*summary_table(cal)),
    ]
    for title, header, rows in curve_tables(cal):
        out += [f"<h3>Threshold curve: {_e(title)}</h3>", _html_table(header, rows)]
    return out


def _scores_are_stale(store: RunStore) -> bool:
    path = store.path / SCORES_FILE
    if not path.exists():
        return True
    newest = max(
        (store.file_for(t).stat().st_mtime for t in (Case, Response, Judgment) if store.file_for(t).exists()), default=0
    )
    return path.stat().st_mtime < newest


def _ties_of_last_score(store: RunStore) -> str:
    """The `ties` rule of the run's last `siuo score` (a stale scores.json is re-scored by the same rule)."""
    try:
        rules = load_scores(store).verdict_rules
    except StoreError:
        return "unsafe"
    return rules.ties if rules else "unsafe"


def report(store: RunStore) -> tuple[Path, Path]:
    """Write report.md and report.html into the run folder (scoring first if scores.json is missing or stale)."""
    scores = score(store, ties=_ties_of_last_score(store)) if _scores_are_stale(store) else load_scores(store)
    with store.stage("report"):
        examples = load_examples(store, scores)
        md_path, html_path = store.path / "report.md", store.path / "report.html"
        write_text_atomic(md_path, render_markdown(store, scores, examples))
        write_text_atomic(html_path, render_html(store, scores, examples))
    return md_path, html_path
