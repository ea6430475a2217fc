"""Many-body inputs that several backends' tests run and compare with QCManyBody's serial computer.

Each case names an input, the driver mode to run it in, and the pytest marks it needs (a program).
"""

from collections.abc import Callable

import pytest
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, mbe_input

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
