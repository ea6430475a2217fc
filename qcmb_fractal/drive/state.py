"""Serializable state of a many-body run: enough to resume it anywhere (a file, a QCFractal service row)."""

from enum import Enum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from qcelemental.models.v2 import AtomicResult
from qcmanybody.models.v2 import ManyBodyInput


class TaskStatus(str, Enum):
    waiting = "waiting"
    running = "running"
    complete = "complete"
    error = "error"


class FailureKind(str, Enum):
    """Why a calculation failed, decided where the failure is seen, so retry decisions read no message text."""

    input_error = "input_error"  # the input is wrong (unknown method, basis, keyword): every try fails alike
    program_error = "program_error"  # the program ran and reported failure (SCF did not converge, ...)
    crash = "crash"  # whatever ran it died or was lost: a worker process, an MPI rank, the server connection
    timeout = "timeout"  # killed after the per-task timeout

    @property
    def retryable(self) -> bool:
        return self is not FailureKind.input_error

    @classmethod
    def from_error_type(cls, error_type: str | None) -> "FailureKind":
        """The kind of a QCEngine (or QCFractal child) error, from its ``error_type``."""
        return cls.input_error if error_type == "input_error" else cls.program_error


class ComponentProperties(BaseModel):
    """What the N-body analysis reads from one fragment calculation (QCManyBody's ``return_*``)."""

    model_config = ConfigDict(frozen=True)

    energy: float | None = None
    gradient: list[list[float]] | None = None
    hessian: list[list[float]] | None = None

    @classmethod
    def from_atomic_result(cls, result: AtomicResult) -> "ComponentProperties":
        """Read ``properties.return_*`` as QCManyBody's serial computer does.

        Some harnesses (QCEngine's xtb) leave ``properties.return_gradient`` empty and put the
        derivative only in ``return_result``, so fall back to it for the driver's own derivative.
        """
        props = result.properties
        values: dict[str, Any] = {}
        for name in ("energy", "gradient", "hessian"):
            value = getattr(props, f"return_{name}", None)
            if value is None and name == result.input_data.specification.driver.value:
                value = result.return_result
            if value is not None:
                values[name] = float(value) if name == "energy" else np.asarray(value, dtype=float).tolist()
        return cls(**values)

    def as_arrays(self) -> dict[str, float | np.ndarray]:
        out: dict[str, float | np.ndarray] = {}
        if self.energy is not None:
            out["energy"] = self.energy
        if self.gradient is not None:
            out["gradient"] = np.asarray(self.gradient, dtype=float)
        if self.hessian is not None:
            out["hessian"] = np.asarray(self.hessian, dtype=float)
        return out


class TaskRecord(BaseModel):
    """Where one fragment calculation stands; absent from the state means it has not been handed out."""

    status: TaskStatus = TaskStatus.waiting
    attempts: int = 0
    properties: ComponentProperties | None = None
    error: str | None = None
    failure: FailureKind | None = None
    worker: str | None = None
    wall_time: float | None = None
    reference: str | None = None  # backend's handle on the calculation, e.g. a QCFractal record id


class DriverState(BaseModel):
    """The driver's whole state. The plan is not stored: it is rebuilt from ``input`` deterministically."""

    input: ManyBodyInput
    mode: Literal["levels", "eager"] = "eager"
    max_attempts: int = Field(3, ge=1)
    tasks: dict[str, TaskRecord] = Field(default_factory=dict)
