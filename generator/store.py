"""A run folder: one append-only JSONL file per record type, plus the `run.json` manifest.

Why append-only and flushed per record: a run can be killed at any moment. What was written stays
written; a crash can tear at most the line being written, which the reader drops with a warning and
the next writer cuts off before appending. Stages ask `done_keys()` and skip finished work, so a re-run
repeats no model call and writes no duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from pydantic import ValidationError

from generator.errors import UserError
from generator.records import Record, RunManifest, StageLog, Usage, utc_now

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

DEFAULT_OUTPUTS = Path("outputs")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


TMP_SUFFIX = ".siuo-tmp"
LOCK_FILE = ".lock"
LOCK_PID_FILE = ".lock.pid"


class StoreError(UserError):
    """A run folder or one of its files cannot be used as it is; the message names the file and line."""


class RunLockedError(StoreError):
    """Another process is writing to the run: two writers would send every request twice and interleave
    conflicting records."""


@contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator:
    """Open a hidden temp file next to `path`; on a clean exit it is synced and renamed over `path`.

    Why: a kill mid-write must leave the previous good file, never a 0-byte or half file. A temp file
    left by a kill is removed by `clean_temp_files` when the next writer takes the run lock.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file whole (see `atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(text)


def clean_temp_files(folder: Path) -> int:
    """Remove temp files left by a killed atomic write in `folder` (and its images/); returns how many."""
    n = 0
    for d in (folder, folder / "images"):
        if d.is_dir():
            for tmp in d.glob(f".*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                n += 1
    if n:
        log.info("%s: removed %d temp file(s) left by an interrupted write", folder, n)
    return n


def outputs_dir() -> Path:
    """Where runs live: `$SIUO_OUTPUTS` or `./outputs`."""
    return Path(os.environ.get("SIUO_OUTPUTS", DEFAULT_OUTPUTS))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file changed under us: inode, size and modification time (None: no file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class RunStore:
    """The folder `outputs/<run>/` and everything written into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._repaired: set[str] = set()
        self._key_index: dict[str, tuple[tuple[int, int, int] | None, set[str]]] = {}

    # -- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, name: str, root: Path | None = None, create: bool = True) -> RunStore:
        """Open (and by default create) the run called `name` under `root` (default: `outputs_dir()`)."""
        if not RUN_NAME.match(name):
            raise StoreError(
                f"run name {name!r} is not allowed: use letters, digits, '.', '_' or '-' (no slashes), "
                "starting with a letter or digit"
            )
        path = (root or outputs_dir()) / name
        if not path.exists():
            if not create:
                raise StoreError(f"run {name!r} does not exist (looked in {path})")
            path.mkdir(parents=True)
        store = cls(path)
        if not store.manifest_path.exists():
            store.save_manifest(RunManifest(name=name))
        return store

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def images_dir(self) -> Path:
        d = self.path / "images"
        d.mkdir(exist_ok=True)
        return d

    def file_for(self, record_type: type[Record]) -> Path:
        return self.path / record_type.FILE

    def resolve(self, stored_path: str) -> Path:
        """A path as stored in a record (relative to the run folder, or absolute) as a real path."""
        p = Path(stored_path)
        return p if p.is_absolute() else self.path / p

    # -- writing ------------------------------------------------------------------------------------

    def _lock(self, filename: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(filename, threading.Lock())

    def _repair_tail(self, path: Path) -> None:
        """Cut a torn last line (a crash mid-write) so the next append starts on a fresh line."""
        if path.name in self._repaired or not path.exists():
            self._repaired.add(path.name)
            return
        with open(path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    fh.seek(0)
                    data = fh.read()
                    cut = data.rfind(b"\n") + 1
                    log.warning(
                        "%s: dropping a torn last line (%d bytes) left by an interrupted write", path, size - cut
                    )
                    fh.truncate(cut)
        self._repaired.add(path.name)

    def append(self, record: Record) -> None:
        """Append one record as one line, flushed to the OS before returning.

        One `write` call per line under a per-file lock: concurrent appends from threads of one process
        never interleave.
        """
        self.append_many([record])

    def append_many(self, records: Iterable[Record]) -> int:
        """Append records of one type in a single `write` call: a group that must land together (the
        images of one render batch) is written all or none by a kill, but for a torn tail."""
        records = list(records)
        if not records:
            return 0
        kinds = {type(r) for r in records}
        if len(kinds) != 1:
            raise ValueError(f"append_many takes records of one type, got {sorted(k.__name__ for k in kinds)}")
        path = self.file_for(records[0].__class__)
        data = b"".join((r.model_dump_json() + "\n").encode("utf-8") for r in records)
        with self._lock(path.name):
            self._append_locked(path, data)
        return len(records)

    def _append_locked(self, path: Path, data: bytes) -> None:
        """Append `data` in one write call; the caller holds the file's lock."""
        self._repair_tail(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one go; loop in case of a short write
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def put(self, record: Record) -> None:
        """Write a record keeping one line per key: a new key is appended; an existing one is replaced
        in place by an atomic rewrite of the file (the new record keeps the old one's position).

        Why: a failure recorded again by a retry that failed again must not add a duplicate line per try.
        """
        path = self.file_for(type(record))
        with self._lock(path.name):
            keys = self._keys_in(path, type(record))
            if record.key not in keys:
                self._append_locked(path, (record.model_dump_json() + "\n").encode("utf-8"))
                keys.add(record.key)
                self._key_index[path.name] = (_stamp(path), keys)
                return
            kept: dict[str, Record] = {}
            for r in self.iter_records(type(record)):
                kept[r.key] = record if r.key == record.key else r
            with atomic_writer(path) as fh:
                fh.writelines(r.model_dump_json() + "\n" for r in kept.values())
            self._repaired.add(path.name)
            self._key_index[path.name] = (_stamp(path), set(kept))

    def _keys_in(self, path: Path, record_type: type[Record]) -> set[str]:
        """The keys in a record file, read once and then kept while the file is as this store left it.

        Why: `put` must know whether its key is new, and reading the whole file per `put` made a run's
        failures cost O(n²) (3,000 failed judgments of 1,000 cases parsed 4.5 million lines). A file
        changed by anyone else (its size or mtime differs) is read again.
        """
        cached = self._key_index.get(path.name)
        stamp = _stamp(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = {r.key for r in self.iter_records(record_type)}
        self._key_index[path.name] = (stamp, keys)
        return keys

    def write_all(self, record_type: type[R], records: Iterable[R]) -> int:
        """Replace a record file whole, atomically (temp file + rename): nothing half-written on failure."""
        path = self.file_for(record_type)
        n = 0
        with self._lock(path.name):
            with atomic_writer(path) as fh:
                for r in records:
                    fh.write(r.model_dump_json() + "\n")
                    n += 1
            self._repaired.add(path.name)
        return n

    @contextmanager
    def writing(self, wait: bool = False) -> Iterator[RunStore]:
        """Hold the run's exclusive writer lock for a whole command.

        Why: two writers on one run send every request twice and leave conflicting records. A second
        writer is refused at once (`RunLockedError`, naming the holder's PID) or, with `wait`, blocks
        until the first is done. Readers (`stats`) take no lock. The OS drops the lock when its holder
        dies, so a killed run never leaves the folder locked.
        """
        lock = FileLock(self.path / LOCK_FILE, timeout=-1 if wait else 0)
        pid_file = self.path / LOCK_PID_FILE
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = pid_file.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise RunLockedError(
                f"run {self.name!r} is being written by another siuo process (PID {holder}); "
                "wait for it to finish, or pass --wait to queue behind it"
            ) from None
        try:
            write_text_atomic(pid_file, f"{os.getpid()}\n")
            clean_temp_files(self.path)
            yield self
        finally:
            pid_file.unlink(missing_ok=True)
            lock.release()

    # -- reading ------------------------------------------------------------------------------------

    def iter_records(self, record_type: type[R]) -> Iterator[R]:
        """Every record in file order, read a line at a time (a 100k-line file is never held whole).
        A torn last line is skipped with a warning; a bad line elsewhere is an error naming the file and
        line (someone edited the file by hand)."""
        path = self.file_for(record_type)
        if not path.exists():
            return
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    yield record_type.model_validate_json(raw)
                except (ValidationError, ValueError) as exc:
                    if not raw.endswith(b"\n"):  # only the last line can lack its newline: a torn write
                        log.warning("%s:%d: ignoring a torn last line (an interrupted write)", path, number)
                        return
                    raise StoreError(
                        f"{path}:{number}: not a valid {record_type.__name__} record: {_first_error(exc)}"
                    ) from None

    def iter_latest(self, record_type: type[R]) -> Iterator[R]:
        """The records of `latest_by_key` (each key's last-written one), streamed in the order those were
        written. Two passes over the file hold only each key's line number, so a stage walks a run of
        100k responses without holding 100k responses."""
        last: dict[str, int] = {}
        for i, r in enumerate(self.iter_records(record_type)):
            last[r.key] = i
        for i, r in enumerate(self.iter_records(record_type)):
            if last.get(r.key) == i:
                yield r

    def read(self, record_type: type[R]) -> list[R]:
        """All records, one per key (the first written wins: a duplicate line never counts twice)."""
        seen: set[str] = set()
        out: list[R] = []
        for r in self.iter_records(record_type):
            if r.key not in seen:
                seen.add(r.key)
                out.append(r)
        return out

    def latest_by_key(self, record_type: type[R], keep: Callable[[R], Any] | None = None) -> dict[str, Any]:
        """Records by key, the last written winning: a retried call (`--retry-failed`) replaces its
        error, a person's later decision replaces the earlier one. Keys keep first-written order.

        `keep`: hold `keep(record)` instead of the record, so a stage that needs only each key's outcome
        holds that, not every response's text (memory flat in run size)."""
        by_key: dict[str, Any] = {}
        for r in self.iter_records(record_type):
            by_key[r.key] = r if keep is None else keep(r)
        return by_key

    def read_latest(self, record_type: type[R]) -> list[R]:
        """One record per key, the last written wins (see `latest_by_key`)."""
        return list(self.latest_by_key(record_type).values())

    def done_keys(self, record_type: type[R]) -> set[str]:
        return {r.key for r in self.iter_records(record_type)}

    def count(self, record_type: type[R]) -> int:
        return len(self.done_keys(record_type))

    # -- manifest -----------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.path / "run.json"

    def load_manifest(self) -> RunManifest:
        if not self.manifest_path.exists():
            return RunManifest(name=self.name)
        try:
            return RunManifest.model_validate_json(self.manifest_path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as exc:
            raise StoreError(f"{self.manifest_path}: not a valid run manifest: {_first_error(exc)}") from None

    def save_manifest(self, manifest: RunManifest) -> None:
        write_text_atomic(self.manifest_path, manifest.model_dump_json(indent=2))

    @contextmanager
    def update_manifest(self) -> Iterator[RunManifest]:
        """Read-modify-write run.json under a lock: `with store.update_manifest() as m: m.models[...] = ...`."""
        with self._lock("run.json"):
            manifest = self.load_manifest()
            yield manifest
            self.save_manifest(manifest)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageLog]:
        """Log a stage's start and end times (and the counts it sets) in the manifest."""
        with self.update_manifest() as m:
            log_ = m.stages.setdefault(name, StageLog())
            log_.started = utc_now()
            log_.finished = None
        entry = StageLog(started=log_.started)
        try:
            yield entry
        finally:
            with self.update_manifest() as m:
                cur = m.stages.setdefault(name, StageLog())
                cur.finished = utc_now()
                cur.counts.update(entry.counts)

    def add_usage(self, usage_by_role: dict[str, Usage]) -> None:
        with self.update_manifest() as m:
            for role, u in usage_by_role.items():
                m.usage[role] = m.usage.get(role, Usage()) + u


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(record)"
        return f"field {loc}: {e.get('msg')}"
    return str(exc).splitlines()[0]


def path_inside(root: Path, name: str) -> Path:
    """`root / name`, refused unless it stays inside `root`: names built from data (ids, image names)
    must never write or read elsewhere, whatever a hostile input file holds."""
    target = (Path(root) / name).resolve()
    base = Path(root).resolve()
    if "\x00" in name or (target != base and base not in target.parents):
        raise UserError(f"{name!r} would leave the folder {root}")
    return Path(root) / name


def dump_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write plain dict rows as JSONL (for exports); atomic."""
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
