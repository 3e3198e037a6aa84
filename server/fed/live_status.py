"""A run's live status: small typed records the ServerApp appends to its run folder as it goes.

`status.jsonl` in the run folder, one JSON object per line, each with a `kind` of RECORDS and
the wall-clock time `t`. The round loop writes them (server/fed/rounds.py, teacher.py); the
dashboard, /metrics and `unikd watch` (server/watch/) only read them, so the training engine
never depends on the dashboard: a run without anyone watching writes the same few lines.

Every line is flushed as it is written (one `write` of a whole line), so a reader sees whole
records; a half-written last line is left for the next read (RecordReader).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.errors import UnikdError

STATUS_FILE = "status.jsonl"
PHASES = ("count-query", "teacher", "unikd", "evaluation", "delivery")
END_STATES = ("completed", "failed")
TEACHER_EVERY = 1.0  # seconds between teacher progress records (a teacher has many rounds)


@dataclass
class Start:
    """The run began: its Flower run id (0 in a simulation) and the clients it waits for."""

    run_id: int
    clients: int
    dataset: str
    dp: str


@dataclass
class Phase:
    """The run entered a phase; `total` rounds in it (0: not counted in rounds)."""

    phase: str
    total: int = 0
    member: int | None = None  # the teacher ensemble member trained (member after member)
    members: int = 1


@dataclass
class Nodes:
    """After the count query: node id -> client id and its training windows."""

    clients: dict[str, int]  # str(node id) -> client id
    windows: dict[str, int]  # str(client id) -> windows


@dataclass
class Progress:
    """A teacher round done (throttled to one record a TEACHER_EVERY seconds)."""

    phase: str
    round: int
    total: int
    exchanges: int
    member: int | None = None


@dataclass
class Round:
    """A UNI-KD round: its rounds.csv numbers, or `skipped` with no row."""

    round: int
    total: int
    exchanges: int
    skipped: bool = False
    seconds: float = 0.0
    clients: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    rejected: list[str] = field(default_factory=list)  # this round's refused updates, why
    latency: dict[str, float] = field(default_factory=dict)  # str(node id) -> seconds to reply
    epsilon: dict[str, float] = field(default_factory=dict)  # str(client id) -> spent (DP)


@dataclass
class Eval:
    """A federated evaluation: evals.csv's numbers (per-client MF1 under per-domain splits)."""

    round: int
    exchanges: int
    mf1: float | None = None
    acc: float | None = None
    per_client: dict[str, float] = field(default_factory=dict)  # str(client id) -> MF1


@dataclass
class Delivered:
    """The final student was installed: str(client id) -> version in its edge service."""

    versions: dict[str, int]


@dataclass
class End:
    """The run ended: `completed` (its run folder is written) or `failed`."""

    state: str
    error: str = ""


RECORDS: dict[str, type] = {"start": Start, "phase": Phase, "nodes": Nodes,
                            "progress": Progress, "round": Round, "eval": Eval,
                            "delivered": Delivered, "end": End}
KIND_OF = {cls: kind for kind, cls in RECORDS.items()}


def parse_record(line: str, where: str) -> tuple[float, Any]:
    """(time, record) of one status line; anything else is an error naming `where`."""
    try:
        raw = json.loads(line)
        kind, t = raw.pop("kind"), float(raw.pop("t"))
        cls = RECORDS[kind]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UnikdError(f"{where}: not a status record ({err!r}): {line[:120]}") from None
    names = {f.name for f in fields(cls)}
    if set(raw) - names:
        raise UnikdError(f"{where}: {kind} record with unknown keys {sorted(set(raw) - names)}")
    try:
        return t, cls(**raw)
    except TypeError as err:
        raise UnikdError(f"{where}: {kind} record: {err}") from None


class LiveStatus:
    """Appends status records to `run_dir/status.jsonl`; with no run folder it writes nothing."""

    def __init__(self, run_dir: Path | None):
        self.path = Path(run_dir) / STATUS_FILE if run_dir is not None else None
        if self.path is not None:  # the run folder itself may be made later (a resumed run's)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last_progress = 0.0

    def write(self, record: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"kind": KIND_OF[type(record)], "t": time.time(), **asdict(record)})
        with open(self.path, "a") as f:  # one write of a whole line: readers see whole lines
            f.write(line + "\n")

    def progress(self, record: Progress) -> None:
        """A teacher round; written at most every TEACHER_EVERY seconds, and the last one."""
        now = time.monotonic()
        if record.round == record.total or now - self._last_progress >= TEACHER_EVERY:
            self._last_progress = now
            self.write(record)


class RecordReader:
    """Reads a status file incrementally: each call returns the whole lines added since."""

    def __init__(self, path: Path):
        self.path, self.offset, self.lineno = Path(path), 0, 0

    def new_records(self) -> list[tuple[float, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        out = []
        for line in data[:end].decode().splitlines():
            self.lineno += 1
            if line.strip():
                out.append(parse_record(line, f"{self.path}:{self.lineno}"))
        self.offset += end
        return out
