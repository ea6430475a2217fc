"""The task list of a screened expansion, which grows as screening decides each level.

It starts with every monomer, once with the screening model chemistry and once with the target; when
level n's screening is complete the driver (:class:`qcmb_fractal.drive.screened.ScreenedDriver`) adds
the target calculations of the kept n-body subsystems and the screening calculations of the (n+1)-body
candidates. Target calculations hash exactly as the unscreened :class:`Plan` hashes them, so a checkpoint
or a QCFractal server's records serve screened and unscreened runs of the same input alike.
"""

import math
from collections.abc import Iterable

from qcelemental import periodictable
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.utils import labeler

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan.planner import (
    MAX_TASKS,
    FragmentBuilder,
    FragmentTask,
    Plan,
    fragment_digests,
    qcmanybody_computer,
    task_hash,
)
from qcmb_fractal.plan.screening import SCREEN_MC, Subsystem, closest_atom_distances, screening_settings


class ScreenedPlan(Plan):
    """The screening and target calculations known so far; :meth:`add` extends them."""

    def __init__(self, inp: ManyBodyInput, *, max_tasks: int = MAX_TASKS) -> None:
        if max_tasks < 1:
            raise InputError(f"--max-tasks must be at least 1, not {max_tasks}.")
        settings = screening_settings(inp)
        if settings is None:
            raise ValueError("ScreenedPlan needs an input with screening settings")
        self.input = inp
        self.settings = settings
        self.max_tasks = max_tasks
        self.builder = FragmentBuilder(inp)
        self.computer = qcmanybody_computer(inp)
        self.core = self.computer.qcmb_core
        self.target_mc: str = next(iter(self.core.mc_levels))
        self.nfragments: int = self.core.nfragments
        self.max_nbody: int = self.core.max_nbody
        mol = self.builder.molecule
        self._digests = fragment_digests(mol)
        self._electrons = [sum(periodictable.to_Z(mol.symbols[i]) for i in atoms) for atoms in mol.fragments]
        self._c1 = mol.fix_symmetry == "c1"
        self._spec_digest = {mc: self.builder.spec_digest(mc) for mc in (self.target_mc, SCREEN_MC)}
        if self._spec_digest[self.target_mc] == self._spec_digest[SCREEN_MC]:
            raise InputError(
                f"the screening model chemistry ({settings.model_string}) is the target's own: every candidate "
                "would be computed at the target level and nothing saved. Screen with a cheaper method."
            )
        self.distances = closest_atom_distances(mol)
        self.tasks: list[FragmentTask] = []
        self.by_hash: dict[str, FragmentTask] = {}
        self._by_level: dict[int, list[FragmentTask]] = {n: [] for n in range(1, self.max_nbody + 1)}
        self.screened: dict[Subsystem, FragmentTask] = {}
        self.targeted: dict[Subsystem, FragmentTask] = {}
        monomers = [(i,) for i in range(1, self.nfragments + 1)]
        self.add(screen=monomers, target=monomers)

    @property
    def by_level(self) -> dict[int, list[FragmentTask]]:
        return self._by_level

    @property
    def full_calculations(self) -> int:
        """What the unscreened expansion computes with the target."""
        return sum(math.comb(self.nfragments, k) for k in range(1, self.max_nbody + 1))

    def screened_at(self, level: int) -> list[FragmentTask]:
        return [t for t in self._by_level.get(level, []) if t.mc == SCREEN_MC]

    def _task(self, mc: str, subsystem: Subsystem) -> FragmentTask:
        return FragmentTask.model_construct(
            hash=task_hash(self._spec_digest[mc], self._c1, self._digests, subsystem, subsystem),
            mc=mc,
            real=subsystem,
            basis=subsystem,
            level=len(subsystem),
            program=self.builder.program(mc),
            cost=float(sum(self._electrons[i - 1] for i in subsystem)) ** 3,
            labels=(labeler(mc, subsystem, subsystem),),
        )

    def add(self, *, screen: Iterable[Subsystem] = (), target: Iterable[Subsystem] = ()) -> list[FragmentTask]:
        """Screening calculations of ``screen`` and target calculations of ``target``; returns the new tasks."""
        new = [self._task(SCREEN_MC, s) for s in screen if s not in self.screened]
        new += [self._task(self.target_mc, s) for s in target if s not in self.targeted]
        if len(self.tasks) + len(new) > self.max_tasks:
            level = max((t.level for t in new), default=0)
            raise InputError(
                f"screening needs more than {self.max_tasks:,} calculations by the {level}-body level "
                f"({len(self.tasks):,} so far, {len(new):,} more); raise the threshold, set a distance "
                "cut-off, lower max_nbody, or raise --max-tasks if this machine has the memory."
            )
        for t in new:
            (self.screened if t.mc == SCREEN_MC else self.targeted)[t.real] = t
            self.tasks.append(t)
            self.by_hash[t.hash] = t
            self._by_level[t.level].append(t)
        return new

    def summary(self) -> str:
        s = self.settings
        dist = f", contact {s.contact:g} Å" + (f", distance cut-off {s.distance:g} Å" if s.distance is not None else "")
        return "\n".join(
            [
                f"screened many-body expansion of {self.nfragments} fragments up to {self.max_nbody}-body, "
                f"model chemistry {self.target_mc!r} ({self.builder.program(self.target_mc)})",
                f"  screening with {s.model_string}, threshold {s.threshold:g} kcal/mol{dist}",
                f"  to start: {len(self.screened)} screening and {len(self.targeted)} target calculations; "
                "higher levels are decided as screening finishes",
                f"  the unscreened expansion needs {self.full_calculations} target calculations",
            ]
        )


def make_plan(inp: ManyBodyInput, *, max_tasks: int = MAX_TASKS) -> Plan:
    """The plan of ``inp``: screened when its specification asks for screening."""
    if screening_settings(inp) is not None:
        return ScreenedPlan(inp, max_tasks=max_tasks)
    return Plan(inp, max_tasks=max_tasks)
