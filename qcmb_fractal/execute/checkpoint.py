"""Finished fragment results on disk, keyed by task hash, so an interrupted run recomputes nothing.

SQLite in WAL mode: each result is committed as it arrives, and a row that does not decode (a torn
write, a corrupted file) is dropped and recomputed rather than trusted.
"""

import hashlib
import logging
import sqlite3
import time
from pathlib import Path

from qcelemental.models.v2 import AtomicResult

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.base import TaskOutcome

logger = logging.getLogger(__name__)

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
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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
        if outcome.result is None:
            raise ValueError("only successful outcomes with a result are checkpointed")
        blob = outcome.result.model_dump_json()
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                outcome.hash,
                label,
                outcome.worker,
                outcome.wall_time,
                time.time(),
                hashlib.sha256(blob.encode()).hexdigest(),
                blob,
            ),
        )
        self.db.commit()

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
                if hashlib.sha256(blob.encode()).hexdigest() != digest:
                    raise ValueError("digest mismatch")
                result = AtomicResult.model_validate_json(blob)
            except ValueError as err:
                logger.warning("checkpoint row %s is damaged (%s); it will be recomputed", key[:12], err)
                bad.append(key)
                continue
            out[key] = TaskOutcome(
                hash=key,
                success=True,
                result=result,
                worker=worker or "?",
                wall_time=wall or 0.0,
            )
        if bad:
            self.db.executemany("DELETE FROM results WHERE hash = ?", [(k,) for k in bad])
            self.db.commit()
        return out

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self.db.close()
