"""One door for every export verb (`export-siuo`, `export-hf`, `export-vlmevalkit`, `export-lmms-eval`): an
export folder that never deletes or overwrites what the export did not write.

Why a marker: `--out` is typed by a person, and a typo (`--out ~/data`, the folder holding the official
`siuo_gen.json`) must not cost them files. Each export writes `.siuo-export.json` listing the files it
wrote with their sha256; the next export into the same folder

- refuses a non-empty folder without a marker, or with another kind's marker, unless `--force`;
- refuses to overwrite or delete a listed file whose content changed since (someone edited it), unless
  `--force`, and any unlisted file that is in the way, unless `--force`;
- never writes over an input of the run (the imported official files, the case images), even with `--force`;
- removes the files of the previous export that the new one does not write (a stale `siuo_mcqa.json`, a
  task YAML for a split no longer exported) and nothing else.

Each file is replaced by one rename (`store.atomic_writer`), so a reader never sees half a file. Which
files a reader sees together is each format's matter: the Hugging Face export switches its whole content
with one rename of its card (see `datasets.hf`); the other formats are read by fixed file names, so while
their few files are renamed one after another a reader can see new and old files side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from generator.errors import UserError
from generator.store import RunStore, path_inside, write_text_atomic

MARKER = ".siuo-export.json"
FORCE_HINT = "(--force writes there anyway)"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_inputs(store: RunStore) -> list[Path]:
    """The files a run was made from, as its manifest records them (official files of `import-siuo`).

    A relative path is taken from the current folder, as the import that recorded it read it."""
    found: list[Path] = []

    def walk(value) -> None:
        if isinstance(value, str) and value:
            found.append(Path(value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(store.load_manifest().sources)
    return found


class ExportFolder:
    """The `--out` folder of one export of `kind`; `claim()` first, write with `target()`, then `commit()`."""

    def __init__(self, out_dir: Path, kind: str, *, force: bool = False, inputs: Iterable[Path] = ()):
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.force = force
        self._inputs = list(inputs)
        self._input_ids: set[tuple[int, int]] | None = None
        self.previous: dict[str, str | list[str] | None] = {}
        """Files (relative names) the previous export of this kind wrote -> their sha256 (None: a folder; a
        list: either content, for a file announced while its replacement was on the way)."""
        self.written: dict[str, str | None] = {}

    # -- checks -------------------------------------------------------------------------------------

    def _is_input(self, path: Path) -> bool:
        """Whether `path` is (or is a link to) a file the run was made from."""
        if self._input_ids is None:
            ids = set()
            for p in self._inputs:
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                ids.add((st.st_dev, st.st_ino))
            self._input_ids = ids
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._input_ids

    def claim(self) -> ExportFolder:
        """Refuse a folder this export may not write into; read the previous export's file list."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        if self._is_input(out):
            raise UserError(f"--out {out}: is an input of the run")
        marker = out / MARKER
        if marker.is_file():
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
                kind, files = data["kind"], data["files"]
                if not isinstance(files, dict):
                    raise TypeError
            except (OSError, ValueError, KeyError, TypeError):
                if not self.force:
                    raise UserError(f"--out {out}: {MARKER} is not readable as an export marker {FORCE_HINT}") from None
                kind, files = None, {}
            if kind != self.kind and not self.force:
                raise UserError(f"--out {out}: holds a `{kind}` export, not a `{self.kind}` one {FORCE_HINT}")
            if kind == self.kind:
                for name in files:  # a marker written by hand must not steer a delete outside the folder
                    path_inside(out, str(name))
                self.previous = {str(k): v for k, v in files.items()}
        elif out.is_dir() and any(out.iterdir()) and not self.force:
            raise UserError(
                f"--out {out}: the folder is not empty and is not an earlier `{self.kind}` export "
                f"(no {MARKER}) {FORCE_HINT}"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {out}: cannot make the folder: {exc.strerror or exc}") from None
        return self

    def _ours_unchanged(self, name: str, path: Path) -> bool:
        if name not in self.previous:
            return False
        digest = self.previous[name]
        if digest is None:  # a folder with its own marker (the dataset inside an lmms-eval task folder)
            return path.is_dir()
        return path.is_file() and sha256_of(path) in ([digest] if isinstance(digest, str) else digest)

    def target(self, name: str) -> Path:
        """The path to write `name` (relative, `/`-separated) at; refused if it would overwrite a file this
        export kind did not write, or an input of the run."""
        path = path_inside(self.out_dir, name)
        if self._is_input(path):
            raise UserError(f"{path}: is an input of the run; an export never writes over it")
        if os.path.lexists(path) and not self.force and not self._ours_unchanged(name, path):
            what = "was changed since the last export" if name in self.previous else "was not written by an export"
            raise UserError(f"{path}: {what}; not overwriting it {FORCE_HINT}")
        if path.is_symlink():  # the new file replaces the link, never the file it points to
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written.setdefault(name, "")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.target(name)
        write_text_atomic(path, text)
        self.wrote(name)
        return path

    def wrote(self, name: str, digest: str | None = "") -> None:
        """Record a file written under `name` (its sha256 computed unless given; None for a folder)."""
        self.written[name] = sha256_of(self.out_dir / name) if digest == "" else digest

    # -- commit -------------------------------------------------------------------------------------

    def _write_marker(self, files: dict[str, str | list[str] | None], **extra) -> None:
        write_text_atomic(
            self.out_dir / MARKER,
            json.dumps(
                {"kind": self.kind, "tool": "siuo-generator", **extra, "files": dict(sorted(files.items()))},
                ensure_ascii=False,
                indent=1,
            )
            + "\n",
        )

    def announce(self, files: dict[str, str]) -> None:
        """List files (name -> sha256) about to be put in place as ours before they are, so a kill between
        leaves none unowned: the next export removes them like any file of the previous export."""
        for name, digest in files.items():
            before = self.previous.get(name)
            known = [] if before is None else [before] if isinstance(before, str) else list(before)
            self.previous[name] = digest if not known else sorted({*known, digest})
        self._write_marker(self.previous)

    def commit(self, **extra) -> None:
        """Remove the previous export's files the new one did not write (unchanged ones only), then record
        the new file list."""
        for name, digest in sorted(self.previous.items()):
            if name in self.written:
                continue
            path = path_inside(self.out_dir, name)
            if digest is None or not path.is_file() or self._is_input(path):
                continue  # a folder of an earlier export is left as it is (its content is its own export's)
            if self._ours_unchanged(name, path):
                path.unlink()
        self._write_marker(dict(self.written), **extra)
