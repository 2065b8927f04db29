"""The request cache: SQLite, keyed by everything that makes a model reply what it is.

Why: re-running a finished (or half-finished) run must cost nothing and make no network request.
A key is the hash of (base_url, model, messages with images as content hashes, params, sample index),
so changing any of them is new work, and asking for sample 3 after samples 0..2 is new work too.
Only successes are stored: a failure is retried on the next run, never served as an answer.

One connection in WAL mode with a busy timeout, guarded by a lock; async callers go through a worker
thread so a slow disk never stalls the event loop. Every statement runs on its own cursor, closed before
the lock is let go, and statements are not cached: a cursor kept alive past the lock (by a traceback, or by
`gc.get_objects()` in another thread) would otherwise reset a shared cached statement from that thread while
this one steps it, which CPython's sqlite3 reports as "bad parameter or other API misuse" (cpython#118172).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.errors import UserError
from generator.untrusted import valid_unicode


class CacheError(UserError):
    """The cache file cannot be opened or used; the message names it."""


def request_key(**parts: Any) -> str:
    """sha256 of the parts as canonical JSON (sorted keys): the same request, the same key."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()  # any text has a key, never a crash


def _blob(value: dict) -> str:
    """A reply as stored: JSON text SQLite can encode (a lone surrogate that got past the boundary is
    replaced, so a reply is cached and served like any other instead of failing every run)."""
    return valid_unicode(json.dumps(value, ensure_ascii=False, separators=(",", ":")))[0]


@dataclass
class CacheStats:
    path: str
    entries: int
    size_bytes: int
    by_kind: dict[str, int]


class RequestCache:
    """Successful replies by request key. Safe to share between asyncio tasks (and threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder should be, no permission, a read-only disk
            raise CacheError(
                f"{self.path}: cannot make the cache folder {self.path.parent}: {exc.strerror or exc} "
                "(set [cache] path to a writable place, or [cache] enabled = false)"
            ) from None
        try:
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, timeout=30.0, isolation_level=None, cached_statements=0
            )
        except sqlite3.DatabaseError as exc:
            raise CacheError(
                f"{self.path}: cannot open the request cache: {exc} (delete the file or run `siuo cache clear`)"
            ) from None
        self._lock = threading.Lock()
        try:
            self._sql("PRAGMA journal_mode=WAL")
            self._sql("PRAGMA busy_timeout=30000")
            self._sql("PRAGMA synchronous=NORMAL")
            self._sql(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                "endpoint TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL)"
            )
            self._sql("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise CacheError(
                f"{self.path}: cannot open the request cache: {exc} (delete the file or run `siuo cache clear`)"
            ) from None
        self.hits = 0
        self.misses = 0

    # -- sync core ------------------------------------------------------------------------------------

    def _sql(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run one statement under the lock; returns its rows."""
        with self._lock:
            return self._run_locked(sql, params)

    def _run_locked(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run one statement on a cursor closed before returning (the caller holds the lock)."""
        cur = self._conn.cursor()
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()

    def _many_locked(self, sql: str, rows: Iterable[Sequence]) -> None:
        cur = self._conn.cursor()
        try:
            cur.executemany(sql, rows)
        finally:
            cur.close()

    def get_sync(self, key: str) -> dict | None:
        rows = self._sql("SELECT value FROM replies WHERE key = ?", (key,))
        if not rows:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(rows[0][0])

    def put_sync(self, key: str, value: dict, kind: str = "chat", endpoint: str = "") -> None:
        self._sql(
            "INSERT OR REPLACE INTO replies (key, kind, endpoint, value, created) VALUES (?, ?, ?, ?, ?)",
            (key, kind, endpoint, _blob(value), time.time()),
        )

    def put_many_sync(self, items: list[tuple[str, dict]], kind: str = "chat", endpoint: str = "") -> None:
        """Store several replies in one transaction: the samples of one request are cached all or none,
        so a kill cannot leave half a reply cached (a resume then asks for the whole request again)."""
        now = time.time()
        rows = [(key, kind, endpoint, _blob(value), now) for key, value in items]
        with self._lock:
            self._run_locked("BEGIN")
            try:
                self._many_locked(
                    "INSERT OR REPLACE INTO replies (key, kind, endpoint, value, created) VALUES (?, ?, ?, ?, ?)", rows
                )
            except BaseException:
                self._run_locked("ROLLBACK")
                raise
            self._run_locked("COMMIT")

    def get_meta(self, name: str) -> str | None:
        rows = self._sql("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_meta(self, name: str, value: str) -> None:
        self._sql("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    # -- async wrappers -------------------------------------------------------------------------------

    async def get(self, key: str) -> dict | None:
        return await asyncio.to_thread(self.get_sync, key)

    async def put(self, key: str, value: dict, kind: str = "chat", endpoint: str = "") -> None:
        await asyncio.to_thread(self.put_sync, key, value, kind, endpoint)

    # -- upkeep ---------------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        with self._lock:
            entries = self._run_locked("SELECT COUNT(*) FROM replies")[0][0]
            by_kind = dict(self._run_locked("SELECT kind, COUNT(*) FROM replies GROUP BY kind"))
        size = sum(p.stat().st_size for p in self._files() if p.exists())
        return CacheStats(path=str(self.path), entries=entries, size_bytes=size, by_kind=by_kind)

    def clear(self) -> int:
        """Delete every entry (and remembered endpoint facts); returns how many replies were removed."""
        with self._lock:
            n = self._run_locked("SELECT COUNT(*) FROM replies")[0][0]
            for statement in ("DELETE FROM replies", "DELETE FROM meta", "PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM"):
                self._run_locked(statement)
        return n

    def _files(self) -> list[Path]:
        return [self.path, Path(str(self.path) + "-wal"), Path(str(self.path) + "-shm")]

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
