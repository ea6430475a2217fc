"""Execute: backends that run fragment calculations through QCEngine, and the loop that feeds them."""

from qcmb_fractal.execute.base import Backend, TaskOutcome, add_backend_arguments, backend_class, backend_names
from qcmb_fractal.execute.checkpoint import Checkpoint
from qcmb_fractal.execute.runner import Runner, RunStats

__all__ = [
    "Backend",
    "Checkpoint",
    "RunStats",
    "Runner",
    "TaskOutcome",
    "add_backend_arguments",
    "backend_class",
    "backend_names",
]
