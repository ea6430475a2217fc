"""One logging set-up for the driver, every worker and every MPI rank, so each record names its process.

The CLI calls :func:`configure_logging` once; a worker (a local pool process or an MPI rank's compute
child) receives the same :class:`LogSettings` in its ``WorkerConfig`` and calls it again, so a
``--log-file`` collects the records of all processes of a run, each naming the worker or rank it came
from (``processName``: ``driver``, ``local-worker-PID``, ``mpi-rank-N``).
"""

import json
import logging
import socket
import sys
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel

LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"

LogFormat = Literal["text", "json"]


class LogSettings(BaseModel):
    """Where records go and how they look; crosses to workers inside ``WorkerConfig``."""

    level: int = logging.WARNING  # on stderr
    file: str | None = None  # appended to by every process of the run; one record per write, one per line
    file_level: int = logging.INFO  # a file is read afterwards, so it keeps more than the terminal shows
    format: LogFormat = "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors (journald, Loki, a container runtime) parse without rules."""

    def __init__(self) -> None:
        super().__init__()
        self.host = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "pid": record.process,
            "host": self.host,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


_CURRENT: LogSettings | None = None


def _formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(LOG_FORMAT)


def configure_logging(settings: LogSettings) -> None:
    """Replace the root handlers with a stderr handler and, if asked, a file handler; remember the settings."""
    global _CURRENT
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(settings.level)
    console.setFormatter(_formatter(settings.format))
    handlers: list[logging.Handler] = [console]
    levels = [settings.level]
    if settings.file is not None:
        file_level = min(settings.file_level, settings.level)
        to_file = logging.FileHandler(settings.file, mode="a", encoding="utf-8")
        to_file.setLevel(file_level)
        to_file.setFormatter(_formatter(settings.format))
        handlers.append(to_file)
        levels.append(file_level)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(min(levels))
    _CURRENT = settings


def current_log_settings() -> LogSettings | None:
    """What :func:`configure_logging` set in this process; None if logging was set up some other way."""
    return _CURRENT
