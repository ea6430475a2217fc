"""QCManyBody's serial computer as the reference, plus input builders and a tolerance-aware comparison."""

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

import numpy as np
import qcengine
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.plan import manybody_input

ENERGY_TOLERANCE = 1.0e-9  # Eh, for every scalar
ARRAY_TOLERANCE = 1.0e-8  # per gradient/hessian element

NWCHEM_HF = ("nwchem", "hf", "sto-3g")
XTB_GFN2 = ("xtb", "gfn2-xtb", None)


def mbe_input(
    molecule: Molecule,
    models: Mapping[str, tuple[str, str, str | None]],
    levels: Mapping[int | str, str],
    *,
    bsse: list[str],
    driver: str = "energy",
    protocols: dict[str, str] | None = None,
    **keywords: Any,
) -> ManyBodyInput:
    """A validated ManyBodyInput; ``models`` maps a model-chemistry name to (program, method, basis)."""
    return manybody_input(
        {
            "molecule": molecule,
            "specification": {
                "driver": driver,
                "keywords": {"bsse_type": bsse, "levels": dict(levels), **keywords},
                "protocols": protocols or {},
                "specification": {
                    name: {"program": program, "model": {"method": method, "basis": basis}, "driver": driver}
                    for name, (program, method, basis) in models.items()
                },
            },
        }
    )


@contextlib.contextmanager
def serial_qcengine(ncores: int | None = None) -> Iterator[None]:
    """Run QCManyBody's serial computer with two honest adjustments to how it calls QCEngine.

    1. QCEngine's xtb harness puts a gradient only in ``return_result`` and leaves
       ``properties.return_gradient`` empty; QCManyBody's serial computer reads only ``properties``
       and stops with ``KeyError: 'ret_gradient'``. The same numbers are copied across (nothing is
       computed or changed), exactly what ``ComponentProperties.from_atomic_result`` does on our side,
       so the reference stays QCManyBody's own arithmetic. Results that have the property pass untouched.
    2. ``ncores``, when given, is passed to every job as ``task_config`` (QCEngine's default is every
       core; on a shared 2-core machine xtb's OpenMP threads then spin for minutes). It changes speed,
       not numbers.
    """
    original = qcengine.compute

    def compute(*args: Any, **kwargs: Any) -> Any:
        if ncores is not None:
            kwargs["task_config"] = {**(kwargs.get("task_config") or {}), "ncores": ncores}
        result = original(*args, **kwargs)
        driver = getattr(getattr(result, "input_data", None), "specification", None)
        driver = getattr(getattr(driver, "driver", None), "value", None)
        if getattr(result, "success", False) and driver in ("gradient", "hessian"):
            name = f"return_{driver}"
            if getattr(result.properties, name) is None:
                props = result.properties.model_copy(update={name: result.return_result})
                result = result.model_copy(update={"properties": props})
        return result

    with mock.patch("qcengine.compute", compute):
        yield


_SERIAL: dict[tuple[str, int | None], ManyBodyResult] = {}


def serial_reference(inp: ManyBodyInput, *, ncores: int | None = 1) -> ManyBodyResult:
    """QCManyBody's own serial computer on ``inp`` (see :func:`serial_qcengine`).

    One core per job by default: the same numbers, minutes faster for xtb on a busy machine; pass
    ``ncores=None`` for QCEngine's own default (every core per job), as the benchmark's anchor does.
    Cached per input for the test session: several backends' tests compare against the same cases,
    and the serial runs are the slowest part of the suite.
    """
    key = (hashlib.sha256(inp.model_dump_json().encode()).hexdigest(), ncores)
    if key not in _SERIAL:
        with serial_qcengine(ncores):
            _SERIAL[key] = ManyBodyComputer.from_manybodyinput(inp)
    return _SERIAL[key]


def differences(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Every place where two dumped results differ beyond tolerance (scalars 1e-9, array elements 1e-8)."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{path}: {type(actual).__name__} instead of a mapping"]
        out = [f"{path}.{k}: missing" for k in expected if k not in actual]
        out += [f"{path}.{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += differences(actual[k], expected[k], f"{path}.{k}")
        return out
    if isinstance(expected, (list, tuple, np.ndarray)):
        a, e = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
        if a.shape != e.shape:
            return [f"{path}: shape {a.shape} instead of {e.shape}"]
        worst = float(np.max(np.abs(a - e))) if e.size else 0.0
        return [f"{path}: max element difference {worst:.3e}"] if worst > ARRAY_TOLERANCE else []
    if isinstance(expected, float) or isinstance(actual, float):
        if actual is None or expected is None:
            return [f"{path}: {actual!r} instead of {expected!r}"]
        diff = abs(float(actual) - float(expected))
        return [f"{path}: {actual!r} instead of {expected!r} (diff {diff:.3e})"] if diff > ENERGY_TOLERANCE else []
    return [] if actual == expected else [f"{path}: {actual!r} instead of {expected!r}"]


def assert_same_result(actual: ManyBodyResult, expected: ManyBodyResult) -> None:
    """return_result, every many-body property (per-level energies, gradients, hessians) and every
    fragment's properties agree within the tolerances."""
    problems = differences(actual.return_result, expected.return_result, "return_result")
    problems += differences(
        actual.properties.model_dump(exclude_none=True),
        expected.properties.model_dump(exclude_none=True),
        "properties",
    )
    problems += differences(
        {k: v.model_dump(exclude_none=True) for k, v in actual.cluster_properties.items()},
        {k: v.model_dump(exclude_none=True) for k, v in expected.cluster_properties.items()},
        "cluster_properties",
    )
    assert not problems, "results differ from QCManyBody's serial computer:\n" + "\n".join(problems[:40])
