"""Generated splits in other evaluation frameworks, and their answers back in.

One module per framework: `vlmevalkit` (TSV export, predictions .xlsx in), `lmms_eval` (task folder
export, samples .jsonl in), `inspect_task` (an inspect_ai task; .eval logs in); `responses_in` turns any
of their answers into this project's Response records, so `judge`, `score` and `report` run unchanged.
"""

from typing import NamedTuple


class ExternalAnswer(NamedTuple):
    """One answer another tool produced, as its file records it, before it becomes a Response."""

    question_id: str
    form: str
    """`gen` (open answer) or `mcqa` (a letter)."""
    sample: int
    text: str | None
    """None when the tool recorded no answer (an error): imported as a failed response, never judged."""
    model: str | None = None
