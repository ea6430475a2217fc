"""Plan: a ManyBodyInput becomes unique, hashed, costed fragment calculations (via QCManyBody)."""

from qcmb_fractal.plan.inputs import GHOST_BLIND_PROGRAMS, load_input, manybody_input, plain_input
from qcmb_fractal.plan.planner import FragmentBuilder, FragmentTask, Plan
from qcmb_fractal.plan.screened import ScreenedPlan, make_plan
from qcmb_fractal.plan.screening import ScreeningSettings, screening_settings, with_screening

__all__ = [
    "GHOST_BLIND_PROGRAMS",
    "FragmentBuilder",
    "FragmentTask",
    "Plan",
    "ScreenedPlan",
    "ScreeningSettings",
    "load_input",
    "make_plan",
    "manybody_input",
    "plain_input",
    "screening_settings",
    "with_screening",
]
