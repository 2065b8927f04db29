"""The safety domains: the nine of SIUO from seeds/domains.toml, plus any a user adds."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from generator.config import read_toml
from generator.errors import UserError
from generator.resources import data_dir

SEEDS_DIR = data_dir("seeds")
BUILTIN_DOMAINS = SEEDS_DIR / "domains.toml"


class DomainError(UserError):
    """A domains file is malformed, or a domain id/label is unknown."""


@dataclass(frozen=True)
class Domain:
    id: str
    label: str
    """The official SIUO `category` text."""
    name: str
    definition: str


def _parse(path: Path) -> list[Domain]:
    data = read_toml(path, DomainError, "domains file")
    out = []
    for i, d in enumerate(data.get("domain", []), start=1):
        missing = [f for f in ("id", "label", "name", "definition") if not str(d.get(f, "")).strip()]
        if missing:
            raise DomainError(f"{path}: domain #{i}: missing field(s) {', '.join(missing)}")
        out.append(Domain(d["id"], d["label"], d["name"], " ".join(d["definition"].split())))
    return out


@lru_cache(maxsize=8)
def load_domains(extra_file: str | None = None) -> tuple[Domain, ...]:
    """The built-in domains, then those of `extra_file` (a later id replaces an earlier one)."""
    domains = {d.id: d for d in _parse(BUILTIN_DOMAINS)}
    if extra_file:
        for d in _parse(Path(extra_file)):
            domains[d.id] = d
    return tuple(domains.values())


def domain_by_id(domain_id: str, extra_file: str | None = None) -> Domain:
    for d in load_domains(extra_file):
        if d.id == domain_id:
            return d
    known = ", ".join(d.id for d in load_domains(extra_file))
    raise DomainError(f"unknown domain {domain_id!r} (known: {known})")


def domain_by_label(label: str, extra_file: str | None = None) -> Domain | None:
    """The domain whose official label (or id) is `label`, ignoring case and surrounding space."""
    key = label.strip().lower()
    for d in load_domains(extra_file):
        if key in (d.label.lower(), d.id.lower()):
            return d
    return None


def select_domains(spec: str, extra_file: str | None = None) -> list[Domain]:
    """`all` or a comma-separated list of ids."""
    if spec.strip().lower() == "all":
        return list(load_domains(extra_file))
    return [domain_by_id(s.strip(), extra_file) for s in spec.split(",") if s.strip()]
