"""The toolkit's own files read at run time (prompts, seeds, example configs, review app templates and
static files), found the same way in a source checkout and in an installed wheel.

Where they live:
- `prompts/`, `seeds/`, `configs/` are kept at the top of the repository (the design card's layout, and
  the place people edit them). `setup.py` copies them into the wheel as package data under
  `generator/_data/`. So an installed wheel reads `generator/_data/<kind>/...`, and a checkout (an
  editable install, or `PYTHONPATH=.`) has no `_data` and reads the top-level folders. Package data is
  looked at first so that a wheel never picks up an unrelated `prompts/` lying next to site-packages.
- The review app's `templates/` and `static/` already sit inside `generator/review/` and ship as
  package data as they are.

Paths are real files: Jinja's loader and Starlette's StaticFiles want directories, and records name the
prompt file. `importlib.resources.files()` gives one for every ordinary install (pip unpacks wheels); a
zip import is not supported. Nothing here raises: a missing file is reported by whoever reads it, with
its path (e.g. "prompt file not found: ..."), so `siuo --help` works even in a broken install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DATA_KINDS = ("prompts", "seeds", "configs")
"""The top-level folders of the repository that ship inside the wheel as `generator/_data/<kind>`."""


def _package_dir(*parts: str) -> Path | None:
    """The folder `parts` inside the installed `generator` package, or None when it is not there."""
    node = resources.files("generator").joinpath(*parts)
    return node if isinstance(node, Path) and node.is_dir() else None


def data_root() -> Path:
    """The folder holding `prompts/`, `seeds/`, `configs/`: the wheel's package data, else the checkout."""
    return _package_dir("_data") or Path(__file__).resolve().parent.parent


def data_dir(kind: str) -> Path:
    """`prompts`, `seeds` or `configs`."""
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r} (known: {', '.join(DATA_KINDS)})")
    return data_root() / kind


def data_file(relative: str | Path) -> Path:
    """A data file by its path in the repository (`prompts/unsafe_concepts.txt`), wherever it is installed."""
    return data_root() / relative


def display_path(path: str | Path) -> str:
    """A path as it goes into records: the toolkit's own files by their repository path
    (`prompts/propose.md`, the same for a checkout and a wheel, no home dirs), others as given."""
    try:
        return Path(path).resolve().relative_to(data_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def review_app_dir(name: str) -> Path:
    """The review app's `templates` or `static` folder."""
    return _package_dir("review", name) or Path(__file__).resolve().parent / "review" / name
