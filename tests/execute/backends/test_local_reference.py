"""The local backend's results equal QCManyBody's own serial computer (1e-9 Eh, 1e-8 per array element).

Each case runs the same ManyBodyInput twice, once through ``ManyBodyComputer.from_manybodyinput`` and
once through the local backend with two workers, and compares return_result, every per-level
many-body property and every fragment's properties. Real programs only: NWChem HF/sto-3g (ghost atoms,
so cp and vmfc) and GFN2-xTB (nocp only, it ignores ghosts).
"""

import pytest
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.cases import CASES
from qcmb_fractal.testing.reference import assert_same_result, serial_reference


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
