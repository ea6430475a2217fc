"""Enumerate the unique fragment calculations of a many-body input.

QCManyBody decides *which* calculations exist (``ManyBodyCore.compute_map``); this module only names
them, deduplicates them, hashes them and estimates their cost. Fragment molecules are built lazily
(``FragmentBuilder``) because building all of them up front costs ~2 ms each: 95 s for a 64-water MBE(3).
"""

import copy
import hashlib
import json
import math
from collections import Counter
from functools import cached_property
from typing import Any

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict
from qcelemental import periodictable
from qcelemental.models.v2 import AtomicInput, AtomicSpecification, Molecule
from qcelemental.models.v2.common_models import DriverEnum
from qcmanybody import ManyBodyCore
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.utils import labeler
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan.inputs import pydantic_message
from qcmb_fractal.plan.screening import SCREEN_MC, screening_settings

HASH_VERSION = "qcmb-fractal-task-v1"

# Above this many calculations a plan is refused before enumeration: measured ~3.6 KB per task in the
# planner alone (64-water MBE(3), 43 744 tasks, 156 MB), before driver state and results double it.
MAX_TASKS = 200_000


def estimate_task_count(inp: ManyBodyInput, stop_above: int | None = None) -> int:
    """Upper bound on the fragment calculations of ``inp``, from binomials, without enumerating any.

    Each model chemistry counts every subset up to its own top level (nocp, cp) or every real subset of
    those (vmfc: C(N,k)·(2^k-1)); duplicates across BSSE treatments are not removed, so this only overshoots.
    ``stop_above`` ends the sum early once it is exceeded, so absurd inputs cost nothing to refuse.
    """
    kw = inp.specification.keywords
    nfr = len(inp.molecule.fragments)
    levels = kw.levels or {kw.max_nbody or nfr: "(auto)"}
    top: dict[str, int] = {}
    for nb, mc in levels.items():
        n = (kw.max_nbody or nfr) if nb == "supersystem" else int(nb)
        top[mc] = max(top.get(mc, 0), min(n, nfr))
    bsse = {b.value for b in kw.bsse_type}
    total = 0
    for mc, n in top.items():
        total += 1 if mc == "supersystem" or "supersystem" in levels else 0
        total += nfr if "cp" in bsse else 0  # monomers in their own basis
        for k in range(1, n + 1):
            c = math.comb(nfr, k)
            total += c * (("nocp" in bsse) + ("cp" in bsse) + ((2**k - 1) if "vmfc" in bsse else 0))
            if stop_above is not None and total > stop_above:
                return total
    return total


class FragmentTask(BaseModel):
    """One unique fragment calculation: what runs, where it sits in the expansion, what it costs."""

    model_config = ConfigDict(frozen=True)

    hash: str
    mc: str
    real: tuple[int, ...]
    basis: tuple[int, ...]
    level: int
    program: str
    cost: float
    labels: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.labels[0]


class FragmentBuilder:
    """Builds fragment molecules and AtomicInputs exactly as QCManyBody's serial computer does.

    Kept separate from :class:`Plan` so a worker process can hold just this (parent molecule plus
    specifications) and build its own inputs instead of receiving them one by one.
    """

    def __init__(self, inp: ManyBodyInput) -> None:
        self.input = inp
        # QCElemental recomputes masses (and real) on every access unless they were given; get_fragment reads them
        # once per atom, which made building fragments half of a service iteration's time. Same values either way.
        self.molecule: Molecule = inp.molecule.model_copy(
            update={"masses_": inp.molecule.masses, "real_": inp.molecule.real}
        )
        self.driver = inp.specification.driver
        self.specifications: dict[str, dict[str, Any]] = {}
        for name, spec in inp.specification.specification.items():
            self.specifications[name] = _entry(spec, self.driver)
        self._targets = list(self.specifications)
        screening = screening_settings(inp)
        if screening is not None:  # screening runs energies only, whatever the expansion's driver
            self.specifications[SCREEN_MC] = _entry(screening.atomic_specification(), DriverEnum.energy)

    def spec_name(self, mc: str) -> str:
        if mc in self.specifications:
            return mc
        if len(self._targets) == 1:  # levels omitted: QCManyBody calls the sole model chemistry "(auto)"
            return self._targets[0]
        raise InputError(f"model chemistry {mc!r} has no entry in specification.specification")

    def program(self, mc: str) -> str:
        return self.specifications[self.spec_name(mc)]["program"]

    def fragment_molecule(self, real: tuple[int, ...], basis: tuple[int, ...]) -> Molecule:
        ghost = list(set(basis) - set(real))
        mol = self.molecule.get_fragment(
            [x - 1 for x in real], [x - 1 for x in ghost], orient=False, group_fragments=False
        )
        updates: dict[str, Any] = {"fix_com": True, "fix_orientation": True}
        if self.molecule.fix_symmetry == "c1":
            updates["fix_symmetry"] = "c1"
        return mol.model_copy(update=updates)

    def atomic_input(self, task: FragmentTask) -> AtomicInput:
        spec = copy.deepcopy(self.specifications[self.spec_name(task.mc)]["specification"])
        return AtomicInput(molecule=self.fragment_molecule(task.real, task.basis), specification=spec)

    def spec_digest(self, mc: str) -> str:
        entry = self.specifications[self.spec_name(mc)]
        blob = json.dumps({"program": entry["program"], **entry["specification"]}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _entry(spec: AtomicSpecification, driver: DriverEnum) -> dict[str, Any]:
    dumped = spec.model_dump()
    program = dumped.pop("program")
    dumped.pop("schema_name", None)
    dumped["driver"] = driver
    return {"program": program, "specification": dumped}


def fragment_digests(mol: Molecule) -> list[str]:
    """Per-fragment content digests; a task hash combines them, so hashing 43k tasks stays cheap."""
    geom = np.asarray(mol.geometry).reshape(-1, 3)
    masses, real = mol.masses, mol.real  # properties rebuilt on every access: hoisted, or planning is quadratic
    digests = []
    for ifr, atoms in enumerate(mol.fragments):
        atoms = list(atoms)
        record = {
            "symbols": [mol.symbols[i] for i in atoms],
            "masses": [f"{masses[i]:.6f}" for i in atoms],
            "real": [bool(real[i]) for i in atoms],
            "geometry": [f"{x:.8f}" for x in geom[atoms].ravel()],
            "charge": f"{mol.fragment_charges[ifr]:.4f}",
            "multiplicity": f"{mol.fragment_multiplicities[ifr]:.4f}",
        }
        digests.append(hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest())
    return digests


def task_hash(
    spec_digest: str, c1: bool, frag_digests: list[str], real: tuple[int, ...], basis: tuple[int, ...]
) -> str:
    """The identity of one calculation: model chemistry, symmetry handling, real and ghost fragments."""
    ghost = sorted(set(basis) - set(real))
    key = "|".join(
        [HASH_VERSION, spec_digest, str(c1), *[frag_digests[i - 1] for i in real], "ghost"]
        + [frag_digests[i - 1] for i in ghost]
    )
    return hashlib.sha256(key.encode()).hexdigest()


def qcmanybody_computer(inp: ManyBodyInput) -> ManyBodyComputer:
    """QCManyBody's computer for ``inp`` without its tasks; its core plans and analyses, it builds the result."""
    try:
        return ManyBodyComputer.from_manybodyinput(inp, build_tasks=False)
    except pydantic.ValidationError as err:
        raise InputError(f"QCManyBody cannot plan this input:\n{pydantic_message(err)}") from None
    except (ValueError, AssertionError) as err:
        raise InputError(f"QCManyBody cannot plan this input: {err}") from None


class Plan:
    """The deduplicated, hashed task list of one ManyBodyInput, in QCManyBody's own order."""

    def __init__(self, inp: ManyBodyInput, *, max_tasks: int = MAX_TASKS) -> None:
        if max_tasks < 1:
            raise InputError(f"--max-tasks must be at least 1, not {max_tasks}.")
        estimate = estimate_task_count(inp, stop_above=max_tasks)
        if estimate > max_tasks:
            kw = inp.specification.keywords
            raise InputError(
                f"this input needs more than {max_tasks:,} fragment calculations ({len(inp.molecule.fragments)} "
                f"fragments, max_nbody {kw.max_nbody}, bsse {[b.value for b in kw.bsse_type]}); planning that "
                "many could exhaust memory. Lower max_nbody, or raise the limit with --max-tasks if this machine "
                "has the memory (about 10 KB per calculation)."
            )
        self.input = inp
        self.builder = FragmentBuilder(inp)
        self.computer = qcmanybody_computer(inp)
        self.core: ManyBodyCore = self.computer.qcmb_core
        self.tasks: list[FragmentTask] = self._enumerate()
        if not self.tasks:  # e.g. cp alone at max_nbody 1: QCManyBody returns 0.0 without computing anything
            kw = inp.specification.keywords
            raise InputError(
                f"this input needs no fragment calculations (bsse {[b.value for b in kw.bsse_type]}, max_nbody "
                f"{kw.max_nbody}), so its only result would be 0.0; raise max_nbody or add 'nocp' to bsse_type."
            )
        self.by_hash: dict[str, FragmentTask] = {t.hash: t for t in self.tasks}

    def _enumerate(self) -> list[FragmentTask]:
        mol = self.builder.molecule
        frag_digest = fragment_digests(mol)
        frag_z = [sum(periodictable.to_Z(mol.symbols[i]) for i in atoms) for atoms in mol.fragments]
        c1 = mol.fix_symmetry == "c1"
        by_hash: dict[str, dict[str, Any]] = {}
        seen_labels: set[str] = set()
        for mc, compute_dict in self.core.compute_map.items():
            spec_digest = self.builder.spec_digest(mc)
            program = self.builder.program(mc)
            for compute_list in compute_dict["all"].values():
                for real, basis in sorted(compute_list):
                    label = labeler(mc, real, basis)
                    if label in seen_labels:
                        continue
                    seen_labels.add(label)
                    digest = task_hash(spec_digest, c1, frag_digest, tuple(real), tuple(basis))
                    if digest in by_hash:
                        by_hash[digest]["labels"].append(label)
                        continue
                    electrons = sum(frag_z[i - 1] for i in basis)
                    by_hash[digest] = {
                        "hash": digest,
                        "mc": mc,
                        "real": tuple(real),
                        "basis": tuple(basis),
                        "level": len(real),
                        "program": program,
                        "cost": float(electrons) ** 3,
                        "labels": [label],
                    }
        return [FragmentTask.model_construct(**{**t, "labels": tuple(t["labels"])}) for t in by_hash.values()]

    @cached_property
    def by_level(self) -> dict[int, list[FragmentTask]]:
        out: dict[int, list[FragmentTask]] = {}
        for t in self.tasks:
            out.setdefault(t.level, []).append(t)
        return dict(sorted(out.items()))

    @property
    def levels(self) -> list[int]:
        return list(self.by_level)

    def tasks_at(self, level: int) -> list[FragmentTask]:
        return self.by_level.get(level, [])

    def counts(self) -> dict[str, dict[int, int]]:
        """Per model chemistry and n-body level, how many labelled calculations (as format_calc_plan counts)."""
        out: dict[str, Counter] = {}
        for t in self.tasks:
            for label in t.labels:
                mc = json.loads(label)[0]
                out.setdefault(mc, Counter())[t.level] += 1
        return {mc: dict(sorted(c.items())) for mc, c in out.items()}

    def atomic_input(self, task: FragmentTask) -> AtomicInput:
        return self.builder.atomic_input(task)

    def summary(self) -> str:
        lines = [f"{len(self.tasks)} unique fragment calculations, {len(self.core.molecule.fragments)} fragments"]
        for mc, counts in self.counts().items():
            lines.append(f"  model chemistry {mc!r} ({self.builder.program(mc)}): {sum(counts.values())}")
            for level, n in counts.items():
                cost = sum(t.cost for t in self.tasks if t.mc == mc and t.level == level)
                lines.append(f"    {level}-body: {n:7d} calculations, estimated cost {cost:.3g}")
        return "\n".join(lines)
