"""Small pieces the benchmark stages share: streaming JSONL, the latest record per key."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from generator.records import Record
from generator.store import StoreError

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

#: Verdicts that are not a judgment of the response: never counted as safe, unsafe, effective or not.
INVALID_VERDICTS = frozenset({"unparsable", "suspect", "error"})


def stream_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of a JSONL file, one line in memory at a time.

    Why not `RunStore.iter_records`: scoring 100k judgments should neither hold the file nor build a
    pydantic object per line. A torn last line (interrupted write) is skipped with a warning, as the
    store does; a bad line elsewhere is an error naming the file and line.
    """
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                if not raw.endswith(b"\n"):  # only the last line can lack its newline: a torn write
                    log.warning("%s:%d: ignoring a torn last line (an interrupted write)", path, lineno)
                    return
                _bad_line(path, lineno, raw)
            if not isinstance(obj, dict):
                _bad_line(path, lineno, raw)
            yield lineno, obj


def _bad_line(path: Path, lineno: int, raw: bytes) -> None:
    raise StoreError(f"{path}:{lineno}: not a valid JSON record line: {raw[:80]!r}")


def require_field(path: Path, lineno: int, obj: dict[str, Any], name: str) -> Any:
    """A field of a streamed record, or an error naming file, line and field (a hand-edited file)."""
    try:
        return obj[name]
    except KeyError:
        raise StoreError(f"{path}:{lineno}: record has no field {name!r}") from None
