"""Finished fragment results on disk, keyed by task hash, so an interrupted run recomputes nothing.

SQLite in WAL mode. Results are committed at most once per ``commit_seconds`` (a transaction per result
cost more driver CPU than many small calculations take): a result arriving later than that after the last
commit is committed at once, others with the next commit, due at most ``commit_seconds`` after the last
one. So a SIGKILL loses at most the results of the last window, and a rerun recomputes nothing committed. A row is
zlib-compressed JSON: the AtomicResult where the run keeps whole results, otherwise just the properties
the analysis reads. A row that does not decode (a torn write, a corrupted file) is dropped and recomputed
rather than trusted.
"""

import hashlib
import json
import logging
import sqlite3
import time
import zlib
from pathlib import Path

from qcelemental.models.v2 import AtomicResult

from qcmb_fractal.drive.state import ComponentProperties
from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.base import TaskOutcome

logger = logging.getLogger(__name__)

COMMIT_SECONDS = 1.0
PROPERTIES_KEY = "component_properties"  # a row holding only what the analysis reads, not an AtomicResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    hash TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    worker TEXT,
    wall_time REAL,
    stored_at REAL NOT NULL,
    digest TEXT NOT NULL,
    result TEXT NOT NULL
)
"""


class Checkpoint:
    def __init__(self, path: str | Path, *, commit_seconds: float = COMMIT_SECONDS) -> None:
        self.path = Path(path)
        self.commit_seconds = commit_seconds
        self._last_commit = float("-inf")
        self._uncommitted = False
        if self.path.is_dir():
            raise InputError(
                f"checkpoint {self.path} is a directory; give a file name such as {self.path / 'run.sqlite'}."
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the checkpoint's directory {self.path.parent}: {err.strerror}.") from None
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.execute(SCHEMA)
            db.commit()
            return db
        except sqlite3.OperationalError as err:
            # cannot open, locked, read-only: the file may be fine, so it is not moved aside
            raise InputError(f"cannot use checkpoint {self.path}: {err}; choose another --checkpoint.") from None
        except sqlite3.DatabaseError as err:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.warning("checkpoint %s is unreadable (%s); moved to %s, starting afresh", self.path, err, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = sqlite3.connect(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            db.commit()
            return db

    def put(self, outcome: TaskOutcome, label: str) -> None:
        """Store a result; it is committed with its batch (see :meth:`due_in`), at the latest by :meth:`close`."""
        if outcome.result is not None:
            document = outcome.result.model_dump_json()
        elif outcome.properties is not None:
            document = json.dumps({PROPERTIES_KEY: outcome.properties.model_dump(exclude_none=True)})
        else:
            raise ValueError("only successful outcomes with a result or its properties are checkpointed")
        blob = zlib.compress(document.encode(), 6)
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                outcome.hash,
                label,
                outcome.worker,
                outcome.wall_time,
                time.time(),
                hashlib.sha256(blob).hexdigest(),
                blob,
            ),
        )
        self._uncommitted = True
        self.commit_if_due()

    def due_in(self) -> float | None:
        """Seconds until the results stored since the last commit must be committed (0: now); None if none."""
        if not self._uncommitted:
            return None
        return max(0.0, self._last_commit + self.commit_seconds - time.monotonic())

    def commit_if_due(self) -> None:
        if self.due_in() == 0.0:
            self.commit()

    def commit(self) -> None:
        self.db.commit()
        self._last_commit = time.monotonic()
        self._uncommitted = False

    def load(self, hashes: set[str]) -> dict[str, TaskOutcome]:
        """Stored outcomes for ``hashes``; rows that fail their digest or do not parse are dropped."""
        out: dict[str, TaskOutcome] = {}
        bad: list[str] = []
        for key, worker, wall, digest, blob in self.db.execute(
            "SELECT hash, worker, wall_time, digest, result FROM results"
        ):
            if key not in hashes:
                continue
            try:
                outcome = _decode(key, digest, blob)
            except (ValueError, zlib.error) as err:
                logger.warning("checkpoint row %s is damaged (%s); it will be recomputed", key[:12], err)
                bad.append(key)
                continue
            out[key] = outcome.model_copy(update={"worker": worker or "?", "wall_time": wall or 0.0})
        if bad:
            self.db.executemany("DELETE FROM results WHERE hash = ?", [(k,) for k in bad])
            self.db.commit()
        return out

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self.commit()
        self.db.close()


def _decode(key: str, digest: str, blob: bytes | str) -> TaskOutcome:
    """A stored row back as an outcome; ValueError (or zlib.error) when it is damaged.

    Rows of earlier versions are uncompressed AtomicResult JSON text.
    """
    raw = blob.encode() if isinstance(blob, str) else blob
    if hashlib.sha256(raw).hexdigest() != digest:
        raise ValueError("digest mismatch")
    document = raw.decode() if isinstance(blob, str) else zlib.decompress(raw).decode()
    data = json.loads(document)
    if isinstance(data, dict) and PROPERTIES_KEY in data:
        properties = ComponentProperties.model_validate(data[PROPERTIES_KEY])
        return TaskOutcome(hash=key, success=True, properties=properties)
    result = AtomicResult.model_validate_json(document)
    properties = ComponentProperties.from_atomic_result(result)
    return TaskOutcome(hash=key, success=True, properties=properties, result=result)
