"""Faults for the Ray executor's tests and benchmark: a render model whose process dies mid-batch once.

Picklable (a Ray actor builds it from its loader), and "once" is a marker file, so the restarted actor,
a fresh process, renders normally and the batch Ray retries on it succeeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DiesOnceLoader:
    """Loads `loader()`'s model; the first `generate` call anywhere (no `marker` yet) kills its process."""

    loader: Callable[[], Any]
    marker: str

    def __call__(self) -> Any:
        return _DiesOnce(self.loader(), self.marker)


class _DiesOnce:
    def __init__(self, model: Any, marker: str):
        self.model = model
        self.marker = marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return self.model.generate(*args, **kwargs)
        os._exit(1)  # mid-batch, no cleanup: what a worker lost to the OOM killer or a node going away looks like
