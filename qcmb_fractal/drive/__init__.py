"""Drive: the resumable level-by-level state machine between a plan and wherever tasks run."""

from qcmb_fractal.drive.driver import LevelProgress, ManyBodyDriver
from qcmb_fractal.drive.screened import ScreenedDriver, driver_from_state, make_driver
from qcmb_fractal.drive.state import ComponentProperties, DriverState, FailureKind, TaskRecord, TaskStatus

__all__ = [
    "ComponentProperties",
    "DriverState",
    "FailureKind",
    "LevelProgress",
    "ManyBodyDriver",
    "ScreenedDriver",
    "TaskRecord",
    "TaskStatus",
    "driver_from_state",
    "make_driver",
]
