"""Generated splits in other evaluation frameworks, and their answers back in.

One module per framework: `vlmevalkit` (TSV export, predictions .xlsx in), `lmms_eval` (task folder
export, samples .jsonl in), `inspect_task` (an inspect_ai task; .eval logs in); `responses_in` turns any
of their answers into this project's Response records, so `judge`, `score` and `report` run unchanged.
"""

import importlib
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from generator.errors import UserError
from generator.records import AnswerForm


def require(module: str, for_what: str) -> ModuleType:
    """Import an optional framework, or stop with one line saying how to install it (no traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f'{for_what} needs {module!r}, which is not installed ({exc}): pip install -e ".[interop]"'
        ) from None


class ExternalAnswer(NamedTuple):
    """One answer another tool produced, as its file records it, before it becomes a Response."""

    question_id: str
    form: AnswerForm
    """`gen` (open answer) or `mcqa` (a letter)."""
    sample: int
    text: str | None
    """None when the tool recorded no answer (an error): imported as a failed response, never judged."""
    model: str | None = None


def render_source(template: str, **values: object) -> str:
    """Python source an export writes (a registration module, a task's utils.py), from a template file in
    `generator/interop/templates/`. Values in code go through `pyrepr` (a Python literal), so no data can
    close a string of the generated source; a name the template uses but the caller forgot is an error."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Python source, not HTML
    )
    env.filters["pyrepr"] = repr
    return env.get_template(template).render(**values)
