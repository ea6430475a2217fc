"""The driver of a screened expansion, and the one place that picks a driver for a plan."""

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from qcelemental.models.v2 import AtomicResult
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.drive.driver import ManyBodyDriver, _expand_labels
from qcmb_fractal.drive.expansion import increment, screened_analysis
from qcmb_fractal.drive.state import ComponentProperties, DriverState, TaskStatus
from qcmb_fractal.plan import FragmentTask, Plan
from qcmb_fractal.plan.screened import ScreenedPlan, make_plan
from qcmb_fractal.plan.screening import (
    SCREEN_MC,
    LevelScreening,
    ScreeningReport,
    Subsystem,
    candidates,
    in_contact,
    select,
    within_distance,
)

# Kept subsystems per level whose screening and target increments give the screening model's bias.
BIAS_SAMPLE = 20


class LevelDecision(NamedTuple):
    report: LevelScreening
    increments: dict[Subsystem, float]  # this level's screening increments
    kept: list[Subsystem]  # this level's, for the target
    candidates: list[Subsystem]  # the next level's, for the screening model
    beyond: int  # the next level's subsystems left out by the distance cut-off


def screening_bias(screen: Mapping[Subsystem, float], target: Mapping[Subsystem, float]) -> float | None:
    """Median (target − screening) increment over the kept subsystems the screening model finds smallest.

    The dropped candidates lie just below the threshold, these just above it: where a cheap model differs
    systematically from the target (HF/sto-3g water pairs near the threshold: +0.1 kcal/mol over GFN1-xTB), this
    says by how much. Both increments of a kept subsystem are known, so measuring costs nothing.
    """
    nearest = sorted(target, key=lambda s: abs(screen[s]))[:BIAS_SAMPLE]
    return float(np.median([target[s] - screen[s] for s in nearest])) if nearest else None


def decide_level(plan: ScreenedPlan, level: int, energies: Mapping[Subsystem, float], *, beyond: int) -> LevelDecision:
    """What screening keeps at ``level`` and screens at the next, from the screening energies of every screened
    subsystem of up to ``level`` fragments. Pure, so any caller holding those energies (the driver, a service
    reading its children) decides exactly alike."""
    settings = plan.settings
    screened = [s for s in energies if len(s) == level]
    increments = {s: increment(energies, s) for s in screened}
    contact = [s for s in screened if in_contact(s, plan.distances, settings.contact)]
    if level == 1:
        kept, dropped = sorted(screened), []  # every monomer is kept
    else:
        kept, dropped = select(increments, settings.threshold_hartree, always=contact)
    report = LevelScreening.decide(
        level,
        plan.nfragments,
        increments,
        dropped,
        beyond=beyond,
        in_contact=sum(1 for s in contact if abs(increments[s]) < settings.threshold_hartree),
    )
    if level == plan.max_nbody:
        return LevelDecision(report, increments, kept, [], 0)
    found = candidates(kept, plan.nfragments)
    near = [s for s in found if within_distance(s, plan.distances, settings.distance)]
    return LevelDecision(report, increments, kept, near, len(found) - len(near))


class ScreenedDriver(ManyBodyDriver):
    """Drives a screened expansion: once level n's screening is complete it decides what to keep, and the
    plan gains the kept n-body target calculations and the (n+1)-body screening candidates.

    Nothing beyond the ordinary :class:`DriverState` is stored: every decision follows from the screening
    energies in it, so a driver rebuilt from a checkpoint or a service's state replays them and decides the
    same. Screening calculations go first (they unlock the next level); then largest first, as usual.
    """

    plan: ScreenedPlan

    def __init__(self, plan: ScreenedPlan, state: DriverState | None = None, **settings) -> None:
        self.plan = plan
        self.state = state or DriverState(input=plan.input, **settings)
        self.decisions: dict[int, LevelDecision] = {}
        self._beyond: dict[int, int] = {}
        self._unfinished: dict[int, set[str]] = {}
        self._open(1)
        self._advance()
        super().__init__(plan, self.state)

    @staticmethod
    def _priority(task: FragmentTask) -> tuple:
        return (task.mc != SCREEN_MC, -task.cost, task.hash)

    def _open(self, level: int) -> None:
        self._unfinished[level] = {
            t.hash for t in self.plan.screened_at(level) if self.status(t) is not TaskStatus.complete
        }

    def _advance(self) -> bool:
        """Decide every level whose screening is complete, lowest first; True if the plan grew."""
        grew = False
        while (level := len(self.decisions) + 1) <= self.plan.max_nbody and not self._unfinished[level]:
            self._decide(level)
            grew = True
        return grew

    def _energy(self, task: FragmentTask) -> float:
        props = self.record(task).properties
        if props is None or props.energy is None:
            raise RuntimeError(f"calculation {task.label} finished without an energy")
        return props.energy

    def _decide(self, level: int) -> None:
        plan = self.plan
        energies = {s: self._energy(t) for s, t in plan.screened.items() if len(s) <= level}
        decision = decide_level(plan, level, energies, beyond=self._beyond.get(level, 0))
        self.decisions[level] = decision
        plan.add(target=decision.kept)
        if level < plan.max_nbody:
            self._beyond[level + 1] = decision.beyond
            plan.add(screen=decision.candidates)
            self._open(level + 1)

    def record_result(self, key: str, properties: ComponentProperties, **details) -> None:
        super().record_result(key, properties, **details)
        task = self.plan.by_hash[key]
        if task.mc == SCREEN_MC:
            self._unfinished[task.level].discard(key)
            if self._advance():
                self._build_schedule()

    def report(self) -> ScreeningReport:
        """What screening decided; once every target result is in, with each level's bias in its estimate."""
        energies = {s: self._energy(t) for s, t in self.plan.targeted.items()} if self.complete else None
        levels = []
        for n in sorted(self.decisions):
            decision = self.decisions[n]
            level = decision.report
            if energies is not None and n > 1:
                kept = {s: increment(energies, s) for s in decision.kept}
                dropped = [x for s, x in decision.increments.items() if s not in kept]
                level = level.with_bias(screening_bias(decision.increments, kept), dropped)
            levels.append(level)
        return ScreeningReport.build(
            self.plan.settings, levels, target=len(self.plan.targeted), screen=len(self.plan.screened)
        )

    def finalize(self, cluster_results: Mapping[str, AtomicResult] | None = None) -> ManyBodyResult:
        """The screened expansion of the kept target results, as a ManyBodyResult whose n-body properties
        are the kept expansion's, with the screening report in ``extras["qcmb_fractal"]["screening"]``."""
        self._require_complete()
        results: dict[Subsystem, dict] = {}
        for s, t in self.plan.targeted.items():
            props = self.record(t).properties
            assert props is not None
            results[s] = props.as_arrays()
        analysis = screened_analysis(self.plan.core, self.plan.target_mc, results)
        analysis["nbody_number"] = len(results)
        clusters = _expand_labels(self.plan.targeted.values(), cluster_results or {})
        result = self.plan.computer.get_results(external_results=analysis, component_results=clusters)
        report = self.report()
        return result.model_copy(
            update={
                "stdout": f"\n{report.table()}\n{result.stdout or ''}",
                "extras": {**result.extras, "qcmb_fractal": {"screening": report.model_dump()}},
            }
        )


def make_driver(plan: Plan, state: DriverState | None = None, **settings) -> ManyBodyDriver:
    """The driver for ``plan``: screened plans need the driver that decides their levels."""
    if isinstance(plan, ScreenedPlan):
        return ScreenedDriver(plan, state, **settings)
    return ManyBodyDriver(plan, state, **settings)


def driver_from_state(state: DriverState) -> ManyBodyDriver:
    """Rebuild a driver from stored state (a QCFractal service's), replaying any screening decisions."""
    return make_driver(make_plan(state.input), state)
