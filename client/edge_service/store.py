"""The device's window store: append-only, crash-safe, bounded by a count or age policy.

SQLite in WAL mode with `synchronous=FULL`: a call's windows go in one transaction, so after a
crash they are all there (the commit reached the log) or none are. Ids come from AUTOINCREMENT
and are never reused, so a window keeps its id until the retention policy removes it. Windows
are stored raw (as the sensor gave them, float32); the model and the trainer normalise.

The edge ClientApp reads its training windows with `store_windows(path)`, in another process
if need be: WAL lets it read while the service writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.edge_service.windows import WindowShape
from shared.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    captured_at REAL NOT NULL,   -- device clock at capture; 0 = unknown
    stored_at REAL NOT NULL,     -- service clock at commit; the age policy reads this
    label INTEGER,               -- NULL for the usual unlabelled window
    data BLOB NOT NULL           -- float32 little-endian, [channels, length]
);
CREATE INDEX IF NOT EXISTS windows_source ON windows(source);
CREATE INDEX IF NOT EXISTS windows_stored_at ON windows(stored_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ROW_OVERHEAD = 64  # bytes per row besides the window itself, for the size policy


@dataclass(frozen=True)
class Retention:
    """How much the store keeps; None means no limit on that axis. Oldest windows go first."""

    max_windows: int | None = None
    max_age_s: float | None = None

    @classmethod
    def from_limits(cls, shape: WindowShape, max_windows: int | None = None,
                    max_mb: float | None = None, max_age_days: float | None = None) -> Retention:
        """A size budget becomes a window budget: every window has the same shape."""
        limits = [n for n in (max_windows, _windows_in(max_mb, shape)) if n is not None]
        return cls(min(limits) if limits else None,
                   max_age_days * 86_400.0 if max_age_days is not None else None)


def _windows_in(max_mb: float | None, shape: WindowShape) -> int | None:
    if max_mb is None:
        return None
    return max(1, int(max_mb * 2**20) // (4 * shape.channels * shape.length + ROW_OVERHEAD))


@dataclass(frozen=True)
class NewWindow:
    source: str
    x: np.ndarray  # [C, L] float32, already validated
    captured_at: float = 0.0
    label: int | None = None


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    first_id: int
    last_id: int
    evicted: int


@dataclass(frozen=True)
class StoreStats:
    windows: int
    per_source: dict[str, int]
    bytes_on_disk: int
    last_round: int  # -1 when no round was recorded
    evicted: int  # by the retention policy since this store was opened


class WindowStore:
    """One connection behind a lock; gRPC worker threads share it."""

    def __init__(self, path: str | Path, shape: WindowShape, retention: Retention = Retention(),
                 clock: Callable[[], float] = time.time):
        self.path, self.shape, self.retention, self._clock = Path(path), shape, retention, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        self._db.executescript(SCHEMA)
        self._check_shape()
        self.evicted_total = 0

    def _check_shape(self) -> None:
        """A store holds one window shape for life: the trainer stacks them into one tensor."""
        found = _meta(self._db, "shape")
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('shape', ?)", (str(self.shape),))
        elif found != str(self.shape):
            raise DataError(self.path, f"store holds windows of shape {found}, the service "
                                       f"expects {self.shape}; use another --store")

    def append(self, rows: Sequence[NewWindow]) -> AppendResult:
        """All rows in one transaction, then the retention policy in the same transaction."""
        now = self._clock()
        params = [(r.source, r.captured_at, now, r.label, _blob(r.x, self.shape)) for r in rows]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = _last_id(self._db)
                self._db.executemany("INSERT INTO windows (source, captured_at, stored_at, label, "
                                     "data) VALUES (?, ?, ?, ?, ?)", params)
                evicted = self._evict(now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.evicted_total += evicted
        return AppendResult(len(rows), before + 1, before + len(rows), evicted)

    def _evict(self, now: float) -> int:
        policy, evicted = self.retention, 0
        if policy.max_age_s is not None:
            evicted += self._db.execute("DELETE FROM windows WHERE stored_at < ?",
                                        (now - policy.max_age_s,)).rowcount
        if policy.max_windows is not None:
            evicted += self._db.execute(
                "DELETE FROM windows WHERE id <= (SELECT id FROM windows ORDER BY id DESC "
                "LIMIT 1 OFFSET ?)", (policy.max_windows,)).rowcount
        return evicted

    def record_round(self, round_: int) -> None:
        with self._lock:
            _set_round(self._db, round_)  # one statement: autocommitted, atomic

    def stats(self) -> StoreStats:
        with self._lock:
            per_source = dict(self._db.execute(
                "SELECT source, COUNT(*) FROM windows GROUP BY source ORDER BY source"))
            last = _meta(self._db, "last_round")
            evicted = self.evicted_total
        return StoreStats(sum(per_source.values()), per_source, disk_bytes(self.path),
                          int(last) if last is not None else -1, evicted)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are the explicit BEGIN/COMMIT above, nothing implicit.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # the log is fsynced at every commit: acked = durable
    return db


def _blob(x: np.ndarray, shape: WindowShape) -> bytes:
    assert x.shape == (shape.channels, shape.length), "windows are validated before the store"
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def _last_id(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'windows'").fetchone()
    return int(row[0]) if row else 0


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _set_round(db: sqlite3.Connection, round_: int) -> None:
    db.execute("INSERT INTO meta VALUES ('last_round', ?) ON CONFLICT(key) DO UPDATE SET "
               "value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
               (str(int(round_)),))


def disk_bytes(path: Path) -> int:
    """The database plus its write-ahead log, as the device's disk sees them."""
    files = (path, path.with_name(path.name + "-wal"))
    return sum(f.stat().st_size for f in files if f.exists())


def _open_existing(path: str | Path) -> tuple[sqlite3.Connection, WindowShape]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no window store here (start `unikd serve --store` first)")
    db = _connect(path)
    shape = _meta(db, "shape")
    if shape is None:
        db.close()
        raise DataError(path, "not a window store: no shape recorded")
    channels, length = (int(v) for v in shape.strip("[]").split(","))
    return db, WindowShape(channels, length)


def _stack(blobs: list[bytes], shape: WindowShape) -> torch.Tensor:
    if not blobs:
        return torch.zeros(0, shape.channels, shape.length)
    x = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, shape.channels, shape.length)
    return torch.from_numpy(x.copy())


def store_windows(path: str | Path, min_windows: int = 1) -> torch.Tensor:
    """Every stored window, oldest first, raw: [N, C, L] float32 (for the ClientApp).

    Raises DataError when fewer than `min_windows` are stored, so a round does not start on
    an empty device.
    """
    db, shape = _open_existing(path)
    try:
        blobs = [row[0] for row in db.execute("SELECT data FROM windows ORDER BY id")]
    finally:
        db.close()
    if len(blobs) < min_windows:
        raise DataError(path, f"{len(blobs)} window(s) stored, at least {min_windows} needed")
    return _stack(blobs, shape)


def store_labelled(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows a person labelled, oldest first: x [N, C, L] raw, y [N] int64."""
    db, shape = _open_existing(path)
    try:
        rows = db.execute("SELECT data, label FROM windows WHERE label IS NOT NULL "
                          "ORDER BY id").fetchall()
    finally:
        db.close()
    return _stack([r[0] for r in rows], shape), torch.tensor([r[1] for r in rows],
                                                             dtype=torch.long)


def store_shape(path: str | Path) -> WindowShape:
    """The window shape an existing store holds (DataError when it is not a window store)."""
    try:
        db, shape = _open_existing(path)
    except sqlite3.DatabaseError as err:
        raise DataError(path, f"not a readable window store ({err})") from None
    db.close()
    return shape


def record_round(path: str | Path, round_: int) -> None:
    """Note that this device trained in `round_` (Status reports the largest one)."""
    db, _ = _open_existing(path)
    try:
        _set_round(db, round_)
    finally:
        db.close()


def window_ids(path: str | Path) -> list[int]:
    db, _ = _open_existing(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM windows ORDER BY id")]
    finally:
        db.close()


__all__ = ["AppendResult", "NewWindow", "Retention", "StoreStats", "WindowStore", "disk_bytes",
           "record_round", "store_labelled", "store_shape", "store_windows", "window_ids"]
