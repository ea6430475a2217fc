"""The screened many-body expansion: the one place where qcmb-fractal computes many-body terms itself.

QCManyBody's analysis needs every subsystem up to max_nbody. A screened expansion keeps a set K of
subsystems that is closed under taking subsets; its energy (gradient, Hessian) through n bodies is the
sum of the increments of K's subsystems of at most n fragments, each by inclusion–exclusion over its own
subsystems::

    ΔE_S = Σ_{T ⊆ S} (-1)^(|S|-|T|) E_T          E_K(n) = Σ_{S ∈ K, |S| ≤ n} ΔE_S

With K = every subsystem of at most n fragments this is QCManyBody's nocp MBE(n) (the tests hold it to
1e-9 Eh against QCManyBody's own analysis). nocp only: each subsystem is computed in its own basis.
Property names, the printed table and the result document stay QCManyBody's (``collect_vars``,
``print_nbody_energy``, ``ManyBodyComputer.get_results``).
"""

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import numpy as np
from qcmanybody import ManyBodyCore
from qcmanybody.models.v2 import BsseEnum
from qcmanybody.utils import collect_vars, labeler, modelchem_labels, print_nbody_energy

from qcmb_fractal.plan.screening import Subsystem

Value = float | np.ndarray


def subsystems_of(subsystem: Subsystem) -> Iterator[Subsystem]:
    """Every non-empty subsystem of ``subsystem``, itself included."""
    for k in range(1, len(subsystem) + 1):
        yield from itertools.combinations(subsystem, k)


def increment(values: Mapping[Subsystem, float], subsystem: Subsystem) -> float:
    """ΔE_S: what ``subsystem`` adds beyond all of its smaller subsystems."""
    n = len(subsystem)
    return math.fsum((-1) ** (n - len(t)) * values[t] for t in subsystems_of(subsystem))


def weights(kept: Collection[Subsystem]) -> dict[Subsystem, dict[int, int]]:
    """How often each subsystem's value enters the n-body contribution Σ_{S ∈ K, |S| = n} ΔE_S, per n.

    The same sums as the increments, regrouped so each value (a gradient or Hessian padded to the whole
    cluster) is touched once per level instead of once per superset.
    """
    known = set(kept)
    out: dict[Subsystem, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for s in known:
        for t in subsystems_of(s):
            if t not in known:
                raise ValueError(f"the kept subsystems are not closed under subsets: {s} is kept but not {t}")
            out[t][len(s)] += (-1) ** (len(s) - len(t))
    return out


def contributions(
    values: Mapping[Subsystem, Value], max_nbody: int, pad: Callable[[Value, Subsystem], Value] | None = None
) -> dict[int, Value]:
    """n-body contributions Σ_{S ∈ K, |S| = n} ΔV_S for n = 1..max_nbody, K being the keys of ``values``.

    ``pad`` turns a subsystem's value into the whole cluster's shape (gradients, Hessians).
    """
    pad = pad or (lambda v, _: v)
    scalar = isinstance(next(iter(values.values())), float)
    terms: dict[int, list[float]] = {n: [] for n in range(1, max_nbody + 1)}
    arrays: dict[int, np.ndarray] = {}
    zero: np.ndarray | None = None
    for t, by_level in weights(list(values)).items():
        value = pad(values[t], t)
        if zero is None and not scalar:
            zero = np.zeros_like(value, dtype=float)
        for n, w in by_level.items():  # never 0: every term of a weight has the sign (-1)^(n-|t|)
            if scalar:
                terms[n].append(w * value)
            else:
                arrays[n] = arrays.get(n, zero) + w * value
    if scalar:
        return {n: math.fsum(ts) for n, ts in terms.items()}
    return {n: arrays.get(n, zero) for n in terms}


def screened_analysis(core: ManyBodyCore, mc: str, results: Mapping[Subsystem, Mapping[str, Value]]) -> dict[str, Any]:
    """What ``ManyBodyCore.analyze`` returns, for the screened expansion over the subsystems of ``results``.

    ``results`` maps every kept subsystem to its target properties (``energy``, ``gradient``, ``hessian``,
    the latter in the subsystem's own size, as QCEngine returns them); ``mc`` is the target's label.
    """
    pads: dict[str, Callable[[Any, Subsystem], Value]] = {
        "energy": lambda v, _: float(v),
        "gradient": lambda v, s: core.resize_gradient(np.asarray(v, dtype=float), s),
        "hessian": lambda v, s: core.resize_hessian(np.asarray(v, dtype=float), s),
    }
    levels = range(1, core.max_nbody + 1)
    available = {"energy"} | {p for props in results.values() for p in props}
    out: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    component_properties: dict[str, dict[str, Any]] = defaultdict(dict)
    natom = len(core.molecule.symbols)
    for prop in sorted(available):
        values = {s: props[prop] for s, props in results.items()}
        by_level = contributions(values, core.max_nbody, pads[prop])
        body = dict(zip(levels, itertools.accumulate(by_level[n] for n in levels), strict=True))
        out[f"ret_{prop}"] = body[core.max_nbody] if core.return_total_data else body[core.max_nbody] - body[1]
        out[f"{prop}_body_dict"] = {BsseEnum.nocp.value: body}
        properties.update(collect_vars(BsseEnum.nocp.value, prop, body, core.max_nbody))
        for s, value in values.items():
            label = labeler(mc, s, s)
            component_properties[label]["calcinfo_natom"] = natom
            component_properties[label][f"return_{prop}"] = pads[prop](value, s)
    energy = out["energy_body_dict"][BsseEnum.nocp.value]
    out["stdout"] = print_nbody_energy(
        energy,
        f"{BsseEnum.nocp.formal()} ({BsseEnum.nocp.abbr()})",
        core.nfragments,
        modelchem_labels(core.nbodies_per_mc_level, presorted=True),
        False,
        False,
        None,
    )
    out["energy_body_dict"] = {f"{n}{BsseEnum.nocp.value}": v for n, v in energy.items()}
    out["results"] = properties
    out["component_properties"] = component_properties
    return out
