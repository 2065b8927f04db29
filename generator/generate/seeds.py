"""What the proposer is shown and told to vary: few-shot seed examples (a seed run's cases or
seeds/examples.jsonl) and the diversity axes (seeds/diversity.toml: sub-topics, settings, personas).

How each request picks its examples and variation is in `generator.generate.propose`'s docstring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from generator.domains import SEEDS_DIR
from generator.errors import UserError
from generator.records import Case, Scenario, stable_key
from generator.store import RunStore

EXAMPLES_FILE = SEEDS_DIR / "examples.jsonl"
DIVERSITY_FILE = SEEDS_DIR / "diversity.toml"


class SeedError(UserError):
    """A seed file (examples, diversity) or seed run cannot be used; the message names file, line, field."""


def dedup_text(question: str, hazard: str) -> str:
    """What two cases are compared on: the question and the hazard it carries with its image.

    The image description is left out on purpose: official seed cases have none, and two cases with the
    same hazard and near-same question are the same test whatever their picture.
    """
    return f"{question.strip()}\n{hazard.strip()}"


@dataclass(frozen=True)
class SeedExample:
    """A case shown to the proposer as an example, and a reference for near-duplicate rejection."""

    id: str
    domain: str
    fields: dict[str, str]
    """The fields shown in the prompt (an official case has no image prompt or description)."""

    @property
    def dedup_text(self) -> str:
        return dedup_text(self.fields.get("question", ""), self.fields.get("hazard", ""))

    @classmethod
    def from_scenario(cls, sc: Scenario) -> SeedExample:
        keep = ("image_prompt", "image_description", "question", "hazard", "reference_answer")
        return cls(sc.key, sc.domain, {k: getattr(sc, k) for k in keep})

    @classmethod
    def from_case(cls, case: Case) -> SeedExample:
        return cls(
            case.key,
            case.domain,
            {
                "question": case.question,
                "hazard": case.hazard or case.safety_warning,
                "reference_answer": case.reference_answer,
            },
        )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_example_scenarios(path: Path = EXAMPLES_FILE) -> list[Scenario]:
    """Hand-written example cases (JSONL, Scenario fields), each line validated; errors name line and field."""
    if not path.is_file():
        raise SeedError(f"{path}: examples file not found")
    out: list[Scenario] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Scenario.model_validate_json(line))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ())) or "(line)"
            raise SeedError(f"{path}:{n}: field {loc}: {err.get('msg')}") from None
    return out


@dataclass(frozen=True)
class SeedPool:
    """Seed examples by domain, and a fingerprint of where they came from (part of every work key)."""

    by_domain: dict[str, list[SeedExample]]
    source: str

    @property
    def all(self) -> list[SeedExample]:
        return [ex for exs in self.by_domain.values() for ex in exs]


def load_seed_pool(store: RunStore, seed_run: str | None = None, examples_file: Path | None = None) -> SeedPool:
    """Seeds from the Case records of `seed_run` (a run beside `store`), else from the examples file."""
    by_domain: dict[str, list[SeedExample]] = {}
    if seed_run:
        seed_store = RunStore.open(seed_run, root=store.path.parent, create=False)
        cases = seed_store.read(Case)
        if not cases:
            raise SeedError(f"seed run {seed_run!r} has no cases ({seed_store.file_for(Case)} is empty or missing)")
        for case in cases:
            by_domain.setdefault(case.domain, []).append(SeedExample.from_case(case))
        source = f"run:{seed_run}:" + stable_key(sorted(c.key for c in cases))
    else:
        path = Path(examples_file or EXAMPLES_FILE)
        for sc in load_example_scenarios(path):
            by_domain.setdefault(sc.domain, []).append(SeedExample.from_scenario(sc))
        source = "file:" + file_sha256(path)[:16]
    for exs in by_domain.values():
        exs.sort(key=lambda ex: ex.id)
    return SeedPool(by_domain, source)


def choose_examples(pool: Sequence[SeedExample], index: int, k: int) -> list[SeedExample]:
    """`k` consecutive examples of the (sorted) pool starting at `index * k`, wrapping: a rotation.
    A pool no bigger than `k` is shown whole, its order rotated by one per request."""
    if not pool or k <= 0:
        return []
    k = min(k, len(pool))
    start = (index * k if len(pool) > k else index) % len(pool)
    return [pool[(start + j) % len(pool)] for j in range(k)]


GENERIC_SUBTOPIC = "any everyday situation that fits the domain"


@dataclass(frozen=True)
class Diversity:
    """Sub-topics per domain, settings and personas (seeds/diversity.toml)."""

    settings: list[str]
    personas: list[str]
    subtopics: dict[str, list[str]]
    sha256: str

    def variation(self, domain_id: str, index: int) -> dict[str, str]:
        """Sub-topic, setting and persona of request `index` (see the module docstring)."""
        subtopics = self.subtopics.get(domain_id) or [GENERIC_SUBTOPIC]
        setting_offset = int(stable_key(domain_id, "setting"), 16)
        persona_offset = int(stable_key(domain_id, "persona"), 16)
        return {
            "subtopic": subtopics[index % len(subtopics)],
            "setting": self.settings[(index + setting_offset) % len(self.settings)],
            "persona": self.personas[(index + persona_offset) % len(self.personas)],
        }


def load_diversity(path: Path = DIVERSITY_FILE) -> Diversity:
    try:  # read here, not with read_toml: the file's hash goes into the records
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise SeedError(f"{path}: diversity file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(f"{path}: not valid TOML: {exc}") from None

    def strings(value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
            raise SeedError(f"{path}: {where}: must be a non-empty list of non-empty strings")
        return [s.strip() for s in value]

    subtopics = data.get("subtopics", {})
    if not isinstance(subtopics, dict):
        raise SeedError(f"{path}: subtopics: must be a table of domain id = [list of strings]")
    return Diversity(
        settings=strings(data.get("settings"), "settings"),
        personas=strings(data.get("personas"), "personas"),
        subtopics={d: strings(v, f"subtopics.{d}") for d, v in subtopics.items()},
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def examples_block(examples: Iterable[SeedExample]) -> str:
    """Examples as JSON lines: untrusted seed text goes into the prompt as quoted data, never as syntax."""
    return "\n".join(json.dumps(ex.fields, ensure_ascii=False) for ex in examples) or "(no examples)"
