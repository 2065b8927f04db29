"""`siuo stats`: what a run holds, per record type and per domain."""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from generator.records import RECORD_TYPES, Case, Scenario
from generator.store import RunStore
from generator.terminal import printable


def record_counts(store: RunStore) -> dict[str, int]:
    """Records per file (distinct keys), for every record type that has a file in the run."""
    return {t.FILE: store.count(t) for t in RECORD_TYPES if store.file_for(t).exists()}


def domain_counts(store: RunStore) -> dict[str, Counter]:
    """Per domain: scenarios (ok / duplicate) and cases per split."""
    out: dict[str, Counter] = {}
    for s in store.read(Scenario):
        out.setdefault(s.domain, Counter())[f"scenarios ({s.status})"] += 1
    for c in store.read(Case):
        row = out.setdefault(c.domain, Counter())
        row[f"cases: {c.split}"] += 1
        if c.image_missing:
            row["image missing"] += 1
    return out


def stats_tables(store: RunStore) -> list[Table]:
    files = Table(title=f"run {printable(store.name)}: records", title_justify="left")
    files.add_column("file")
    files.add_column("records", justify="right")
    counts = record_counts(store)
    for name, n in counts.items():
        files.add_row(name, str(n))
    if not counts:
        files.add_row("(empty run)", "0")

    per_domain = domain_counts(store)
    columns = sorted({k for row in per_domain.values() for k in row})
    domains = Table(title="per domain", title_justify="left")
    domains.add_column("domain")
    for col in columns:
        domains.add_column(col, justify="right")
    totals: Counter[str] = Counter()
    for domain in sorted(per_domain):
        row = per_domain[domain]
        totals.update(row)
        domains.add_row(printable(domain), *(str(row.get(c, 0)) for c in columns))
    if per_domain:
        domains.add_row("[bold]total[/]", *(f"[bold]{totals.get(c, 0)}[/]" for c in columns))
    return [files, domains]
