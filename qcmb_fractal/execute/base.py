"""The one interface every backend implements, in the spirit of ``concurrent.futures.Executor``.

A backend takes :class:`FragmentTask` objects and returns futures of :class:`TaskOutcome`. Everything
else (ordering, retries, checkpoints, progress, the final analysis) lives in the runner and the driver,
so a new backend is one module in ``qcmb_fractal.execute.backends``.
"""

import abc
import argparse
import importlib
import pkgutil
from concurrent.futures import Future
from typing import Any, ClassVar

from pebble import ProcessExpired
from pydantic import BaseModel
from qcelemental.models.v2 import AtomicResult

from qcmb_fractal.drive.state import ComponentProperties, FailureKind
from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import FragmentTask, Plan


class TaskOutcome(BaseModel):
    """What comes back from running one fragment calculation, wherever it ran."""

    hash: str
    success: bool
    properties: ComponentProperties | None = None
    result: AtomicResult | None = None
    error: str | None = None
    kind: FailureKind | None = None  # set on every failure
    worker: str = "?"
    wall_time: float = 0.0
    reference: str | None = None

    @classmethod
    def failure(cls, hash: str, kind: FailureKind, error: str, **details: Any) -> "TaskOutcome":
        return cls(hash=hash, success=False, kind=kind, error=error, **details)

    @classmethod
    def from_exception(cls, hash: str, exc: BaseException, **details: Any) -> "TaskOutcome":
        """The failed outcome of a task whose future raised ``exc`` (its worker died, it timed out, ...)."""
        return cls.failure(hash, *describe_exception(exc), **details)


def describe_exception(exc: BaseException) -> tuple[FailureKind, str]:
    """What a task's future raised, as a failure kind and one line a person can act on."""
    if isinstance(exc, ProcessExpired):
        code = exc.exitcode
        how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"exit code {code}"
        return FailureKind.crash, f"worker process died ({how}) while running this calculation"
    if isinstance(exc, TimeoutError):
        detail = f" ({exc})" if str(exc) else ""
        return FailureKind.timeout, f"calculation exceeded the per-task timeout{detail} and was killed"
    return FailureKind.crash, f"{type(exc).__name__}: {exc}"


class Backend(abc.ABC):
    """Runs fragment calculations somewhere; knows nothing of the many-body expansion around them."""

    name: ClassVar[str]

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Declare this backend's command-line options."""

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "Backend":
        return cls()

    def start(self, plan: Plan) -> None:
        """Prepare for ``plan`` (spawn workers, ship the parent molecule) before the first submit."""

    @property
    def capacity(self) -> int | None:
        """How many tasks are worth queueing at once; None means everything (the backend queues)."""
        return None

    @abc.abstractmethod
    def submit(self, task: FragmentTask) -> Future:
        """Start ``task``; the future resolves to a :class:`TaskOutcome` or raises what went wrong."""

    def submit_many(self, tasks: list[FragmentTask]) -> list[Future]:
        """Submit several tasks; backends that pay per round trip override this to batch."""
        return [self.submit(t) for t in tasks]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release workers and scratch space."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)


def add_option(group: argparse._ArgumentGroup, flag: str, **kwargs: Any) -> None:
    """Declare ``flag`` unless another backend already did: all backends share the ``run`` parser, and
    shared options (``--memory``, ``--timeout``...) mean the same thing wherever calculations run."""
    if flag not in group._option_string_actions:
        group.add_argument(flag, **kwargs)


def backend_modules() -> list[str]:
    from qcmb_fractal.execute import backends

    # Tests live beside the backends (test_<name>.py); they are not backends.
    return sorted(m.name for m in pkgutil.iter_modules(backends.__path__) if not m.name.startswith(("_", "test_")))


def backend_class(name: str) -> type[Backend]:
    """Find a backend by name: the module ``qcmb_fractal.execute.backends.<name>`` exports ``BACKEND``."""
    if name not in backend_modules():
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(backend_modules())}.")
    module = importlib.import_module(f"qcmb_fractal.execute.backends.{name}")
    return module.BACKEND
