"""The local backend's results equal QCManyBody's own serial computer (1e-9 Eh, 1e-8 per array element).

Each case runs the same ManyBodyInput twice, once through ``ManyBodyComputer.from_manybodyinput`` and
once through the local backend with two workers, and compares return_result, every per-level
many-body property and every fragment's properties. Real programs only: NWChem HF/sto-3g (ghost atoms,
so cp and vmfc) and GFN2-xTB (nocp only, it ignores ghosts).
"""

from collections.abc import Callable

import pytest
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, assert_same_result, mbe_input, serial_reference

ALL_BSSE = ["nocp", "cp", "vmfc"]
HF = {"hf": NWCHEM_HF}


def trimer(driver: str, max_nbody: int = 3) -> ManyBodyInput:
    return mbe_input(water_trimer(), HF, {max_nbody: "hf"}, bsse=ALL_BSSE, driver=driver)


CASES: dict[str, tuple[Callable[[], ManyBodyInput], str, list]] = {
    # name: (input, driver mode, marks)
    "trimer-energy-nocp-cp-vmfc": (lambda: trimer("energy"), "levels", [needs_nwchem, pytest.mark.nwchem]),
    "trimer-gradient-nocp-cp-vmfc": (lambda: trimer("gradient"), "eager", [needs_nwchem, pytest.mark.nwchem]),
    "trimer-hessian-nocp-cp-vmfc-mbe2": (lambda: trimer("hessian", 2), "eager", [needs_nwchem, pytest.mark.nwchem]),
    "hexamer-energy-nocp-cp-mbe2": (
        lambda: mbe_input(water_cluster(6), HF, {2: "hf"}, bsse=["nocp", "cp"]),
        "levels",
        [needs_nwchem, pytest.mark.nwchem, pytest.mark.slow],
    ),
    "trimer-multilevel-energy-nocp-cp": (
        lambda: mbe_input(
            water_trimer(),
            {"hf/6-31g": ("nwchem", "hf", "6-31g"), "hf/sto-3g": NWCHEM_HF},
            {1: "hf/6-31g", 3: "hf/sto-3g"},
            bsse=["nocp", "cp"],
        ),
        "eager",
        [needs_nwchem, pytest.mark.nwchem],
    ),
    "trimer-supersystem-gradient-nocp": (
        lambda: mbe_input(
            water_trimer(),
            {"hf": NWCHEM_HF, "gfn2": XTB_GFN2},
            {2: "hf", "supersystem": "gfn2"},
            bsse=["nocp"],
            driver="gradient",
        ),
        "eager",
        [needs_nwchem, needs_xtb, pytest.mark.nwchem],
    ),
    "water10-xtb-energy-nocp-mbe3": (
        lambda: mbe_input(water_cluster(10), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"]),
        "eager",
        [needs_xtb],
    ),
    "water10-xtb-gradient-nocp-mbe3": (
        lambda: mbe_input(water_cluster(10), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], driver="gradient"),
        "levels",
        [needs_xtb],
    ),
}


@pytest.fixture(scope="module", params=[pytest.param(name, marks=marks) for name, (_, _, marks) in CASES.items()])
def case(request: pytest.FixtureRequest) -> tuple[Plan, ManyBodyResult, ManyBodyResult]:
    """(plan, local result, serial reference) for one case, computed once per module."""
    build, mode, _ = CASES[request.param]
    inp = build()
    plan = Plan(inp)
    with LocalBackend(2) as backend:
        local = Runner(plan, backend, mode=mode, progress=False).run()
    return plan, local, serial_reference(inp)


def test_local_backend_equals_qcmanybody_serial(case: tuple[Plan, ManyBodyResult, ManyBodyResult]) -> None:
    _, local, reference = case
    assert_same_result(local, reference)


def test_every_fragment_computed_once(case: tuple[Plan, ManyBodyResult, ManyBodyResult]) -> None:
    plan, local, reference = case
    stats = local.extras["qcmb_fractal"]
    assert stats["computed"] == len(plan.tasks) and stats["reused"] == 0 and stats["failed_attempts"] == 0
    assert local.properties.calcinfo_nmbe == reference.properties.calcinfo_nmbe
    assert local.properties.calcinfo_nmbe == sum(len(t.labels) for t in plan.tasks)
