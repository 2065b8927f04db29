"""Prompt templates live as files in prompts/ (one per task, shipped in the wheel, see resources.py);
records carry the file's hash.

Templates use `string.Template` placeholders (`$question`, `${domain_definition}`): substitution is one
pass, so text inserted into a template (seed cases, model output) is data and is never itself expanded.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from generator.errors import UserError
from generator.resources import data_dir

PROMPTS_DIR = data_dir("prompts")


class PromptError(UserError):
    """A prompt file is missing, or a template names a field that was not given."""


@dataclass(frozen=True)
class Prompt:
    text: str
    path: Path
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def render(self, **fields: object) -> str:
        try:
            return string.Template(self.text).substitute({k: str(v) for k, v in fields.items()})
        except KeyError as exc:
            raise PromptError(f"{self.path}: template needs field {exc.args[0]!r}, which was not given") from None
        except ValueError as exc:
            raise PromptError(f"{self.path}: bad placeholder in template: {exc}") from None


def load_prompt(name_or_path: str | Path) -> Prompt:
    """A prompt by name (`judge_safety` -> prompts/judge_safety.md) or by a path to the user's own file."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = PROMPTS_DIR / f"{p.name}.md"
    if not p.is_file():
        raise PromptError(f"prompt file not found: {p}")
    text = p.read_text(encoding="utf-8")
    return Prompt(text=text, path=p, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
