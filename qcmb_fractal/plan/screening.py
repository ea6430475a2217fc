"""Energy screening: which subsystems of a many-body expansion are worth the target model chemistry's time.

Bottom-up, as in Fragme∩t (Broderick & Herbert): every monomer is kept; an (n+1)-body subsystem is a
candidate only if each of its n-body subsystems was kept (and, with a distance cut-off, each pair of its
fragments has atoms within that distance); a candidate is kept when its increment, computed with a cheap
screening model chemistry, is at least the threshold in magnitude. A pair in close contact is kept whatever
its screening increment: a cheap model's increment for a close pair can be near zero by accident (GFN1-xTB
and GFN2-xTB water pairs correlate only r ≈ 0.7), and dropping it would also drop, unscreened, every larger
subsystem that holds it. The kept set is closed under taking subsets, which is what the screened expansion
(:mod:`qcmb_fractal.drive.expansion`) needs.

The settings live in the input itself, ``specification.extras["qcmb_fractal"]["screening"]`` of the
QCSchema ManyBodyInput, so a checkpoint, a worker, a QCFractal service and a result all see the same ones.
"""

import itertools
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from qcelemental import constants
from qcelemental.models.v2 import AtomicSpecification, Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_fractal.errors import InputError

Subsystem = tuple[int, ...]  # 1-based fragment indices, ascending, as QCManyBody labels them

# The model chemistry name of screening calculations in labels; parentheses like QCManyBody's "(auto)".
SCREEN_MC = "(screen)"
EXTRAS_KEY = "qcmb_fractal"

# kcal/mol. Chosen with benchmarks/bench_screening.py (docs/screening.md has the figures): GFN1-xTB
# screening GFN2-xTB water clusters keeps the real error far below 0.1 kcal/mol per monomer at MBE(4).
DEFAULT_THRESHOLD = 0.01
# Å between the closest atoms of two fragments: first-shell neighbours of water (hydrogen-bonded or not).
DEFAULT_CONTACT = 3.0

ANGSTROM_PER_BOHR = constants.bohr2angstroms


class ScreeningSettings(BaseModel):
    """How to screen: the cheap model chemistry, the threshold and an optional distance cut-off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    program: str = Field(description="QCEngine program of the screening model chemistry, e.g. xtb")
    method: str = Field(description="e.g. gfn1-xtb")
    basis: str | None = None
    keywords: dict[str, Any] = Field(default_factory=dict)
    threshold: float = Field(
        DEFAULT_THRESHOLD,
        ge=0.0,
        allow_inf_nan=False,
        description="kcal/mol: a candidate is kept when its screening increment is at least this in magnitude",
    )
    distance: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="Å: a subsystem is a candidate only if every pair of its fragments has atoms this close",
    )
    contact: float = Field(
        DEFAULT_CONTACT,
        ge=0.0,
        allow_inf_nan=False,
        description="Å: a pair of fragments with atoms this close is kept whatever its screening increment (0: none)",
    )

    @field_validator("program")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @classmethod
    def from_model_string(cls, text: str, **options: Any) -> "ScreeningSettings":
        """``PROGRAM/METHOD[/BASIS]`` as the command line takes it, e.g. ``xtb/gfn1-xtb``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
            raise InputError(
                f"--screen {text!r} is not PROGRAM/METHOD[/BASIS]; give e.g. --screen xtb/gfn1-xtb "
                "or --screen nwchem/hf/sto-3g."
            )
        program, method, *basis = (p.strip() for p in parts)
        return settings_from_dict(
            {"program": program, "method": method, "basis": basis[0] if basis else None, **options}
        )

    @property
    def model_string(self) -> str:
        return "/".join(p for p in (self.program, self.method, self.basis) if p)

    @property
    def threshold_hartree(self) -> float:
        return self.threshold / constants.hartree2kcalmol

    def atomic_specification(self) -> AtomicSpecification:
        return AtomicSpecification(
            program=self.program,
            driver="energy",
            model={"method": self.method, "basis": self.basis},
            keywords=dict(self.keywords),
        )


def settings_from_dict(data: Mapping[str, Any]) -> ScreeningSettings:
    """Validate screening settings; InputError names every field that is wrong."""
    try:
        return ScreeningSettings.model_validate(dict(data))
    except pydantic.ValidationError as err:
        from qcmb_fractal.plan.inputs import pydantic_message  # inputs imports this module

        raise InputError(f"the screening settings are not valid:\n{pydantic_message(err)}") from None


def screening_settings(inp: ManyBodyInput) -> ScreeningSettings | None:
    """The input's screening settings, or None for an ordinary (unscreened) expansion."""
    ours = inp.specification.extras.get(EXTRAS_KEY) or {}
    data = ours.get("screening") if isinstance(ours, Mapping) else None
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise InputError(
            "specification.extras.qcmb_fractal.screening must be a mapping such as "
            "{program: xtb, method: gfn1-xtb, threshold: 0.01}."
        )
    return settings_from_dict(data)


def with_screening(inp: ManyBodyInput, settings: ScreeningSettings | None) -> ManyBodyInput:
    """``inp`` with its screening settings replaced (None removes them); InputError if they cannot go together."""
    extras = dict(inp.specification.extras)
    ours = dict(extras.get(EXTRAS_KEY) or {})
    ours.pop("screening", None)
    if settings is not None:
        ours["screening"] = settings.model_dump(mode="json")
    if ours:
        extras[EXTRAS_KEY] = ours
    else:
        extras.pop(EXTRAS_KEY, None)
    spec = inp.specification.model_copy(update={"extras": extras})
    out = inp.model_copy(update={"specification": spec})
    check_screening(out)
    return out


def check_screening(inp: ManyBodyInput) -> None:
    """Refuse what a screened expansion cannot do yet, saying what to change."""
    settings = screening_settings(inp)
    if settings is None:
        return
    import qcengine

    spec = inp.specification
    kw = spec.keywords
    bsse = [b.value for b in kw.bsse_type]
    if bsse != ["nocp"]:
        raise InputError(
            f"screening works with bsse_type ['nocp'] only, not {bsse}: counterpoise-corrected screened "
            "expansions are not implemented. Use bsse_type ['nocp'], or run without screening."
        )
    levels = kw.levels or {}
    if "supersystem" in levels or len(set(levels.values())) > 1 or len(spec.specification) > 1:
        raise InputError(
            "screening needs one model chemistry for every n-body level (no multilevel, no supersystem); "
            "give a single entry in specification.specification, or run without screening."
        )
    if kw.supersystem_ie_only:
        raise InputError("screening cannot skip intermediate n-body levels; drop supersystem_ie_only.")
    if SCREEN_MC in spec.specification:
        raise InputError(f"the model chemistry name {SCREEN_MC!r} is reserved for screening; rename it.")
    if settings.program not in qcengine.list_all_programs():
        raise InputError(
            f"screening program {settings.program!r} is not a QCEngine program; QCEngine knows "
            f"{', '.join(sorted(qcengine.list_all_programs()))}."
        )


def closest_atom_distances(molecule: Molecule) -> np.ndarray:
    """(nfragments, nfragments) array of the shortest interatomic distance between two fragments, in Å."""
    geom = np.asarray(molecule.geometry, dtype=float).reshape(-1, 3) * ANGSTROM_PER_BOHR
    frags = [list(f) for f in molecule.fragments]
    out = np.zeros((len(frags), len(frags)))
    for i, j in itertools.combinations(range(len(frags)), 2):
        diff = geom[frags[i]][:, None, :] - geom[frags[j]][None, :, :]
        out[i, j] = out[j, i] = float(np.sqrt((diff**2).sum(-1)).min())
    return out


def within_distance(subsystem: Subsystem, distances: np.ndarray, cutoff: float | None) -> bool:
    """Every pair of the subsystem's fragments has atoms within ``cutoff`` Å (no cut-off: always)."""
    if cutoff is None:
        return True
    return all(distances[i - 1, j - 1] <= cutoff for i, j in itertools.combinations(subsystem, 2))


def candidates(kept: Collection[Subsystem], nfragments: int) -> list[Subsystem]:
    """The (n+1)-body subsystems whose every n-body subsystem is in ``kept`` (all of ``kept`` has size n).

    Each candidate is found once, from its subsystem without the highest fragment, as in Apriori.
    """
    known = set(kept)
    out: list[Subsystem] = []
    for base in sorted(known):
        for j in range(base[-1] + 1, nfragments + 1):
            cand = (*base, j)
            if all(cand[:i] + cand[i + 1 :] in known for i in range(len(base))):
                out.append(cand)
    return out


def in_contact(subsystem: Subsystem, distances: np.ndarray, contact: float) -> bool:
    """A pair whose closest atoms are within ``contact`` Å: kept whatever its screening increment."""
    return len(subsystem) == 2 and distances[subsystem[0] - 1, subsystem[1] - 1] <= contact


def select(
    increments: Mapping[Subsystem, float], threshold: float, always: Collection[Subsystem] = ()
) -> tuple[list[Subsystem], list[Subsystem]]:
    """Split candidates into kept (|increment| ≥ threshold in Eh, or in ``always``) and dropped, ascending."""
    keep = set(always)
    kept = sorted(s for s, d in increments.items() if abs(d) >= threshold or s in keep)
    dropped = sorted(s for s, d in increments.items() if abs(d) < threshold and s not in keep)
    return kept, dropped


class LevelScreening(BaseModel):
    """What screening decided at one n-body level."""

    level: int
    full: int = Field(description="subsystems of this size: what the unscreened expansion computes")
    beyond_distance: int = Field(0, description="not candidates: some pair of fragments beyond the cut-off")
    candidates: int = Field(description="screened: every smaller subsystem was kept")
    kept: int
    kept_in_contact: int = Field(0, description="of the kept, pairs kept for their close contact alone")
    dropped: int
    estimated_error: float = Field(
        0.0, description="Eh: sum of the magnitudes of the dropped screening increments, each corrected by bias"
    )
    estimated_error_signed: float = Field(0.0, description="Eh: the plain sum of those increments (they cancel)")
    bias: float | None = Field(
        None, description="Eh: median (target - screening) increment of the kept nearest the threshold"
    )
    largest_dropped: float | None = Field(None, description="Eh: the dropped increment of largest magnitude")
    largest_dropped_subsystem: list[int] | None = None

    @classmethod
    def decide(
        cls,
        level: int,
        nfragments: int,
        increments: Mapping[Subsystem, float],
        dropped: list[Subsystem],
        *,
        beyond: int = 0,
        in_contact: int = 0,
    ) -> "LevelScreening":
        lost = [increments[s] for s in dropped]
        worst = max(dropped, key=lambda s: abs(increments[s]), default=None)
        return cls(
            level=level,
            full=math.comb(nfragments, level),
            beyond_distance=beyond,
            candidates=len(increments),
            kept=len(increments) - len(dropped),
            kept_in_contact=in_contact,
            dropped=len(dropped),
            estimated_error=math.fsum(abs(x) for x in lost),
            estimated_error_signed=math.fsum(lost),
            largest_dropped=None if worst is None else increments[worst],
            largest_dropped_subsystem=None if worst is None else list(worst),
        )

    def with_bias(self, bias: float | None, dropped: Iterable[float]) -> "LevelScreening":
        """The estimate once the target's results are in: each dropped screening increment moved by ``bias``."""
        shift = bias or 0.0
        return self.model_copy(update={"bias": bias, "estimated_error": math.fsum(abs(x + shift) for x in dropped)})


class ScreeningReport(BaseModel):
    """The summary stored in a screened result's ``extras["qcmb_fractal"]["screening"]``.

    ``estimated_error`` estimates the size of (full expansion − screened expansion): the screening model's
    increments of the dropped candidates, each moved by its level's ``bias`` (how far the target's increments
    differ from the screening model's on the kept subsystems nearest the threshold), in magnitude, summed. The
    plain sum of the increments, ``estimated_error_signed``, is reported too but cancels: dropped terms are
    small and of both signs. Neither covers subsystems that never became candidates (beyond the distance
    cut-off, or holding a dropped one).
    """

    model: str
    threshold: float = Field(description="kcal/mol")
    distance: float | None = Field(None, description="Å")
    contact: float = Field(DEFAULT_CONTACT, description="Å")
    levels: list[LevelScreening]
    target_calculations: int
    screen_calculations: int
    full_calculations: int = Field(description="what the unscreened expansion computes with the target")
    saved_calculations: int = Field(description="full_calculations - target_calculations")
    estimated_error: float = Field(description="Eh, magnitudes summed")
    estimated_error_signed: float = Field(description="Eh")
    largest_dropped_increment: float | None = Field(None, description="Eh")
    largest_dropped_subsystem: list[int] | None = None

    @classmethod
    def build(
        cls, settings: ScreeningSettings, levels: list[LevelScreening], *, target: int, screen: int
    ) -> "ScreeningReport":
        full = sum(lv.full for lv in levels)
        worst = max(
            (lv for lv in levels if lv.largest_dropped is not None),
            key=lambda lv: abs(lv.largest_dropped or 0.0),
            default=None,
        )
        return cls(
            model=settings.model_string,
            threshold=settings.threshold,
            distance=settings.distance,
            contact=settings.contact,
            levels=levels,
            target_calculations=target,
            screen_calculations=screen,
            full_calculations=full,
            saved_calculations=full - target,
            estimated_error=math.fsum(lv.estimated_error for lv in levels),
            estimated_error_signed=math.fsum(lv.estimated_error_signed for lv in levels),
            largest_dropped_increment=None if worst is None else worst.largest_dropped,
            largest_dropped_subsystem=None if worst is None else worst.largest_dropped_subsystem,
        )

    def table(self) -> str:
        """Per level: what screening kept and dropped, and the estimated error, for the CLI and record output."""
        kcal = constants.hartree2kcalmol
        dist = f", distance {self.distance:g} Å" if self.distance is not None else ""
        rows = [
            f"screened with {self.model}, threshold {self.threshold:g} kcal/mol, contact {self.contact:g} Å{dist}",
            f"{'n-body':>6} {'full':>9} {'candidates':>10} {'kept':>9} {'contact':>8} {'dropped':>9} {'beyond':>7} "
            f"{'est. error [kcal/mol]':>22} {'largest dropped [kcal/mol]':>27}",
        ]
        for lv in self.levels:
            largest = f"{lv.largest_dropped * kcal:27.6f}" if lv.largest_dropped is not None else f"{'-':>27}"
            rows.append(
                f"{lv.level:6d} {lv.full:9d} {lv.candidates:10d} {lv.kept:9d} {lv.kept_in_contact:8d} "
                f"{lv.dropped:9d} {lv.beyond_distance:7d} {lv.estimated_error * kcal:22.6f} {largest}"
            )
        share = self.target_calculations / self.full_calculations if self.full_calculations else 0.0
        rows.append(
            f"target calculations {self.target_calculations} of {self.full_calculations} ({share:.1%}), "
            f"{self.screen_calculations} screening calculations; estimated error {self.estimated_error:.3e} Eh "
            f"({self.estimated_error * kcal:.4f} kcal/mol; signed sum {self.estimated_error_signed * kcal:.4f})"
        )
        return "\n".join(rows)
