"""The screened-expansion arithmetic against QCManyBody's own analysis, on real fragment results.

Each case's fragment calculations run once per module (QCManyBody's serial computer, through QCEngine);
with nothing screened the screened expansion must give QCManyBody's result, property by property, and
with one dimer dropped it must give what the increments say by hand.
"""

import itertools
import re
from collections.abc import Callable

import numpy as np
import pytest
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult
from qcmanybody.utils import delabeler

from qcmb_fractal.drive import ComponentProperties
from qcmb_fractal.drive.expansion import contributions, increment, screened_analysis, weights
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, assert_same_result, mbe_input, serial_reference

ALL = {"cluster_results": "all"}


def xtb(molecule, max_nbody: int, driver: str, **keywords) -> ManyBodyInput:
    return mbe_input(
        molecule, {"gfn2": XTB_GFN2}, {max_nbody: "gfn2"}, bsse=["nocp"], driver=driver, protocols=ALL, **keywords
    )


CASES: dict[str, tuple[Callable[[], ManyBodyInput], list]] = {
    "cyclic-trimer-gradient-mbe3": (lambda: xtb(water_trimer(), 3, "gradient"), [needs_xtb]),
    "square-tetramer-energy-mbe2-total": (
        lambda: xtb(water_cluster(4), 2, "energy", return_total_data=True),
        [needs_xtb],
    ),
    "pentamer-gradient-mbe3": (lambda: xtb(water_cluster(5), 3, "gradient"), [needs_xtb]),
    "hexamer-energy-mbe4": (lambda: xtb(water_cluster(6), 4, "energy"), [needs_xtb]),
    "trimer-nwchem-hessian-mbe2": (
        lambda: mbe_input(water_trimer(), {"hf": NWCHEM_HF}, {2: "hf"}, bsse=["nocp"], driver="hessian", protocols=ALL),
        [needs_nwchem, pytest.mark.nwchem],
    ),
}


class Case:
    """One input, QCManyBody's result for it, and its fragment results by subsystem."""

    def __init__(self, inp: ManyBodyInput) -> None:
        self.plan = Plan(inp)
        self.reference: ManyBodyResult = serial_reference(inp)
        self.mc = next(iter(self.plan.core.mc_levels))
        self.results = {
            tuple(delabeler(label)[1]): ComponentProperties.from_atomic_result(r).as_arrays()
            for label, r in self.reference.cluster_results.items()
        }

    def result(self, kept) -> ManyBodyResult:
        results = {s: self.results[s] for s in kept}
        analysis = screened_analysis(self.plan.core, self.mc, results)
        analysis["nbody_number"] = len(results)
        clusters = {
            label: r for label, r in self.reference.cluster_results.items() if tuple(delabeler(label)[1]) in results
        }
        return self.plan.computer.get_results(external_results=analysis, component_results=clusters)


@pytest.fixture(scope="module", params=[pytest.param(k, marks=m) for k, (_, m) in CASES.items()])
def case(request) -> Case:
    return Case(CASES[request.param][0]())


@pytest.fixture(scope="module")
def trimer() -> Case:
    return Case(CASES["cyclic-trimer-gradient-mbe3"][0]())


def test_nothing_screened_equals_qcmanybody(case: Case) -> None:
    """Every n-body property, the return value and every fragment's properties, to 1e-9 Eh / 1e-8 per element."""
    result = case.result(case.results)
    assert_same_result(result, case.reference)
    assert result.properties.calcinfo_nmbe == len(case.results) == case.reference.properties.calcinfo_nmbe
    # QCManyBody's table, its numbers equal to the last printed digits but one (kcal/mol at 1e-12)
    number = re.compile(r"-?\d+\.\d+")
    assert number.sub("#", result.stdout) == number.sub("#", case.reference.stdout)
    got, want = (np.array([float(x) for x in number.findall(t)]) for t in (result.stdout, case.reference.stdout))
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


def test_one_dimer_dropped_by_hand(trimer: Case) -> None:
    """Without (1,3) the trimer is no candidate either: E = E1+E2+E3 + ΔE12 + ΔE23 = E12 + E23 - E2."""
    kept = [(1,), (2,), (3,), (1, 2), (2, 3)]
    result = trimer.result(kept)
    e = {s: r["energy"] for s, r in trimer.results.items()}
    total = e[(1, 2)] + e[(2, 3)] - e[(2,)]
    monomers = e[(1,)] + e[(2,)] + e[(3,)]
    props = result.properties
    assert props.nocp_corrected_total_energy_through_2_body == pytest.approx(total, abs=1e-10)
    assert props.nocp_corrected_total_energy_through_3_body == pytest.approx(total, abs=1e-10)
    assert props.nocp_corrected_3_body_contribution_to_energy == 0.0
    assert props.nocp_corrected_interaction_energy == pytest.approx(total - monomers, abs=1e-10)
    assert props.calcinfo_nmbe == 5 and set(result.cluster_results) == {f'["gfn2", {list(s)}, {list(s)}]' for s in kept}

    def padded(s):
        return trimer.plan.core.resize_gradient(np.asarray(trimer.results[s]["gradient"]), s)

    gradient = padded((1, 2)) + padded((2, 3)) - padded((2,))
    np.testing.assert_allclose(np.asarray(result.return_result), gradient, atol=1e-12, rtol=0)
    full = trimer.reference.properties.nocp_corrected_total_energy
    assert abs(total - full) > 1e-4  # dropping a hydrogen-bonded dimer is visible: the test can fail


def test_increment_is_inclusion_exclusion(trimer: Case) -> None:
    e = {s: r["energy"] for s, r in trimer.results.items()}
    three = e[(1, 2, 3)] - e[(1, 2)] - e[(1, 3)] - e[(2, 3)] + e[(1,)] + e[(2,)] + e[(3,)]
    assert increment(e, (1, 2, 3)) == pytest.approx(three, abs=1e-12)
    assert increment(e, (1, 3)) == pytest.approx(e[(1, 3)] - e[(1,)] - e[(3,)], abs=1e-12)
    assert increment(e, (2,)) == e[(2,)]
    by_level = contributions(e, 3)
    assert by_level[3] == pytest.approx(three, abs=1e-12)
    assert sum(by_level.values()) == pytest.approx(trimer.reference.properties.nocp_corrected_total_energy, abs=1e-9)


def test_weights_and_empty_levels() -> None:
    kept = [(1,), (2,), (3,), (1, 2), (2, 3)]
    w = weights(kept)
    assert {s: dict(v) for s, v in w.items()} == {
        (1,): {1: 1, 2: -1},
        (2,): {1: 1, 2: -2},
        (3,): {1: 1, 2: -1},
        (1, 2): {2: 1},
        (2, 3): {2: 1},
    }
    with pytest.raises(ValueError, match=r"not closed under subsets: \(1, 2\) is kept but not \(2,\)"):
        weights([(1,), (1, 2)])
    values = {s: np.full((2, 3), float(len(s))) for s in kept}
    out = contributions(values, 3)
    np.testing.assert_array_equal(out[3], np.zeros((2, 3)))  # no trimer kept: a zero of the right shape
    np.testing.assert_array_equal(out[2], np.zeros((2, 3)) + 2 * 2 - 4)  # 2+2 from dimers, -1-2-1 from monomers
    scalars = {s: float(sum(s)) for s in itertools.chain(kept)}
    assert contributions(scalars, 3)[3] == 0.0
