"""Plan: a ManyBodyInput becomes unique, hashed, costed fragment calculations (via QCManyBody)."""

from qcmb_fractal.plan.inputs import GHOST_BLIND_PROGRAMS, load_input, manybody_input, plain_input
from qcmb_fractal.plan.planner import FragmentBuilder, FragmentTask, Plan

__all__ = [
    "GHOST_BLIND_PROGRAMS",
    "FragmentBuilder",
    "FragmentTask",
    "Plan",
    "load_input",
    "manybody_input",
    "plain_input",
]
