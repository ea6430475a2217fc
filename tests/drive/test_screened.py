"""The screened driver: level decisions, growth of the plan, scheduling, replay from state, failures.

Fragment results are real (GFN2-xTB target, GFN1-xTB screening on a square water tetramer, the 2x2
grid whose diagonal pairs are not hydrogen-bonded), computed once per module and fed to the drivers,
so the thresholds below are set between real increments.
"""

import json
import statistics

import pytest
import qcengine
from qcelemental import constants

from qcmb_fractal.drive import (
    ComponentProperties,
    DriverState,
    ManyBodyDriver,
    ScreenedDriver,
    TaskStatus,
    driver_from_state,
    make_driver,
)
from qcmb_fractal.drive.expansion import increment
from qcmb_fractal.drive.screened import screening_bias
from qcmb_fractal.errors import RunFailed
from qcmb_fractal.plan import FragmentTask, Plan, ScreeningSettings, make_plan, with_screening
from qcmb_fractal.plan.screening import SCREEN_MC
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, mbe_input

pytestmark = needs_xtb

EDGES = [(1, 2), (1, 3), (2, 4), (3, 4)]  # hydrogen-bonded neighbours of the 2x2 grid
DIAGONALS = [(1, 4), (2, 3)]


def screened_input(threshold: float, distance: float | None = None, contact: float = 0.0, driver: str = "energy"):
    """Without the contact rule unless asked: every pair of this small square is in contact at 3 Å."""
    inp = mbe_input(water_cluster(4), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], driver=driver)
    settings = ScreeningSettings(
        program="xtb", method="gfn1-xtb", threshold=threshold, distance=distance, contact=contact
    )
    return with_screening(inp, settings)


class Results:
    """Every fragment result the tests may ask for, computed on first request (hashes do not depend on τ)."""

    def __init__(self) -> None:
        self.by_hash: dict[str, ComponentProperties] = {}

    def of(self, plan: Plan, task: FragmentTask) -> ComponentProperties:
        if task.hash not in self.by_hash:
            result = qcengine.compute(plan.atomic_input(task), task.program, task_config={"ncores": 1})
            assert result.success, result.error
            self.by_hash[task.hash] = ComponentProperties.from_atomic_result(result)
        return self.by_hash[task.hash]

    def finish(self, driver: ManyBodyDriver, tasks: list[FragmentTask]) -> None:
        for t in tasks:
            driver.record_result(t.hash, self.of(driver.plan, t), worker="w1", wall_time=0.01)

    def run(self, driver: ManyBodyDriver) -> None:
        while batch := driver.next_batch():
            self.finish(driver, batch)

    def energies(self, plan, mc: str) -> dict[tuple[int, ...], float]:
        tasks = plan.screened if mc == SCREEN_MC else plan.targeted
        return {s: self.of(plan, t).energy for s, t in tasks.items()}


@pytest.fixture(scope="module")
def results() -> Results:
    out = Results()
    out.run(make_driver(make_plan(screened_input(0.0)), mode="eager"))  # everything once, at τ = 0
    return out


@pytest.fixture(scope="module")
def increments(results: Results) -> dict[tuple[int, ...], float]:
    """The screening model's dimer increments (Eh)."""
    plan = make_plan(screened_input(0.0))
    for s in EDGES + DIAGONALS:
        plan.add(screen=[s])
    e = results.energies(plan, SCREEN_MC)
    return {s: increment(e, s) for s in EDGES + DIAGONALS}


def kcal(x: float) -> float:
    return x * constants.hartree2kcalmol


def test_levels_mode_screens_then_computes_level_by_level(results: Results) -> None:
    driver = make_driver(make_plan(screened_input(0.0)), mode="levels")
    assert isinstance(driver, ScreenedDriver)
    first = driver.next_batch()
    assert [t.mc for t in first] == [SCREEN_MC] * 4 + ["gfn2"] * 4  # screening first: it unlocks the next level
    results.finish(driver, first[:4])
    assert [t.real for t in driver.plan.screened_at(2)] == [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    assert driver.next_batch() == []  # level 2 waits for level 1's target calculations
    results.finish(driver, first[4:])
    second = driver.next_batch()
    assert {t.mc for t in second} == {SCREEN_MC} and len(second) == 6
    results.finish(driver, second)
    third = driver.next_batch()  # τ = 0 keeps every dimer: six targets now; trimer screening waits for them
    assert sorted(t.real for t in third) == sorted(EDGES + DIAGONALS) and {t.mc for t in third} == {"gfn2"}
    assert [p.total for p in driver.progress()] == [8, 12, 4]
    results.finish(driver, third)
    results.run(driver)
    assert driver.complete and len(driver.plan.tasks) == 2 * 14
    report = driver.report()
    assert [(lv.candidates, lv.kept, lv.dropped) for lv in report.levels] == [(4, 4, 0), (6, 6, 0), (4, 4, 0)]
    assert report.estimated_error == 0.0 and report.saved_calculations == 0


def test_eager_mode_lets_screening_run_ahead_of_targets(results: Results) -> None:
    driver = make_driver(make_plan(screened_input(0.0)), mode="eager")
    first = driver.next_batch(limit=4)
    assert [t.mc for t in first] == [SCREEN_MC] * 4
    results.finish(driver, first)
    ahead = driver.next_batch(limit=6)  # the dimers' screening before the waiting monomer targets
    assert [t.mc for t in ahead] == [SCREEN_MC] * 6 and {t.level for t in ahead} == {2}
    assert [t.mc for t in driver.next_batch()] == ["gfn2"] * 4


def test_diagonals_dropped_leave_no_trimer_and_are_the_estimate(results: Results, increments) -> None:
    weak = max(abs(increments[s]) for s in DIAGONALS)
    strong = min(abs(increments[s]) for s in EDGES)
    assert weak < strong / 3  # the geometry gives a clean gap, so the threshold below is not on a knife edge
    tau = kcal((weak + strong) / 2)
    driver = make_driver(make_plan(screened_input(tau)), mode="levels")
    results.run(driver)
    result = driver.finalize()

    assert set(driver.plan.targeted) == {(1,), (2,), (3,), (4,), *EDGES}
    assert driver.plan.screened_at(3) == []  # every trimer holds a diagonal
    e = results.energies(driver.plan, "gfn2")
    by_hand = sum(e[(i,)] for i in range(1, 5)) + sum(e[s] - e[(s[0],)] - e[(s[1],)] for s in EDGES)
    assert result.properties.nocp_corrected_total_energy == pytest.approx(by_hand, abs=1e-10)
    assert result.properties.calcinfo_nmbe == 8 and len(result.cluster_properties) == 8

    screening = result.extras["qcmb_fractal"]["screening"]
    assert screening["target_calculations"] == 8 and screening["full_calculations"] == 14
    assert screening["screen_calculations"] == 10 and screening["saved_calculations"] == 6
    assert screening["estimated_error_signed"] == pytest.approx(sum(increments[s] for s in DIAGONALS), abs=1e-15)
    # the bias: median of (target - screening) increments over the kept pairs (fewer than BIAS_SAMPLE here)
    target = {s: e[s] - e[(s[0],)] - e[(s[1],)] for s in EDGES}
    bias = statistics.median(target[s] - increments[s] for s in EDGES)
    assert screening["levels"][1]["bias"] == pytest.approx(bias, abs=1e-15)
    by_hand = sum(abs(increments[s] + bias) for s in DIAGONALS)
    assert screening["estimated_error"] == pytest.approx(by_hand, abs=1e-15)
    assert screening["levels"][2]["bias"] is None  # no trimer kept: nothing to measure it on
    levels = {lv["level"]: lv for lv in screening["levels"]}
    assert (levels[2]["candidates"], levels[2]["kept"], levels[2]["dropped"]) == (6, 4, 2)
    assert (levels[3]["full"], levels[3]["candidates"], levels[3]["estimated_error"]) == (4, 0, 0.0)
    worst = max(DIAGONALS, key=lambda s: abs(increments[s]))
    assert screening["largest_dropped_subsystem"] == list(worst)
    assert screening["largest_dropped_increment"] == pytest.approx(increments[worst], abs=1e-15)
    assert result.stdout.lstrip().startswith(f"screened with xtb/gfn1-xtb, threshold {tau:g} kcal/mol")
    assert "N-Body: Non-Counterpoise Corrected (NoCP) energies" in result.stdout


def test_one_dimer_dropped_removes_exactly_its_trimers(results: Results, increments) -> None:
    ranked = sorted(increments, key=lambda s: abs(increments[s]))
    tau = kcal((abs(increments[ranked[0]]) + abs(increments[ranked[1]])) / 2)
    driver = make_driver(make_plan(screened_input(tau)), mode="eager")
    results.run(driver)
    dropped = ranked[0]
    trimers = [(1, 2, 3), (1, 2, 4), (1, 3, 4), (2, 3, 4)]
    assert [t.real for t in driver.plan.screened_at(3)] == [s for s in trimers if not set(dropped) <= set(s)]
    assert dropped not in driver.plan.targeted
    report = driver.report()
    assert [(lv.candidates, lv.kept) for lv in report.levels[:2]] == [(4, 4), (6, 5)]
    assert len(driver.plan.targeted) == 4 + 5 + report.levels[2].kept
    pairs = report.levels[1]
    assert pairs.estimated_error_signed == increments[dropped]
    assert pairs.bias is not None and pairs.estimated_error == pytest.approx(abs(increments[dropped] + pairs.bias))
    assert driver.decisions[2].report.bias is None  # before the targets are in, no bias: plain magnitudes


def test_pairs_in_contact_are_kept_whatever_the_screening_says(results: Results, increments) -> None:
    tau = kcal(max(abs(x) for x in increments.values())) * 2  # above every pair's screening increment
    driver = make_driver(make_plan(screened_input(tau, contact=2.0)), mode="eager")
    results.run(driver)
    level = driver.report().levels[1]
    # the three hydrogen-bonded pairs (closest atoms 1.89 Å) stay, the other three go
    assert set(driver.plan.targeted) - {(1,), (2,), (3,), (4,)} == {(1, 2), (2, 4), (3, 4)}
    assert (level.kept, level.kept_in_contact, level.dropped) == (3, 3, 3)
    assert driver.plan.screened_at(3) == []


def test_distance_cut_off_skips_far_pairs_without_screening_them(results: Results) -> None:
    plan = make_plan(screened_input(0.0, distance=2.0))  # three pairs hydrogen-bonded at 1.89 Å, the rest ≥ 2.68 Å
    driver = make_driver(plan, mode="eager")
    results.run(driver)
    assert [t.real for t in plan.screened_at(2)] == [(1, 2), (2, 4), (3, 4)]
    assert plan.screened_at(3) == []  # each trimer holds a far pair
    report = driver.report()
    level = report.levels[1]
    assert (level.beyond_distance, level.candidates, level.kept, level.estimated_error) == (3, 3, 3, 0.0)
    assert report.estimated_error == 0.0 and report.distance == 2.0  # what lies beyond is not estimated


def test_a_driver_rebuilt_from_state_replays_the_decisions(results: Results, increments) -> None:
    tau = kcal(min(abs(increments[s]) for s in EDGES) / 2)
    driver = make_driver(make_plan(screened_input(tau)), mode="levels", max_attempts=2)
    for _ in range(4):  # level 1, level 2's screening, level 2's targets, and a part of level 3
        results.finish(driver, driver.next_batch(limit=10))
    stored = json.loads(driver.state.model_dump_json())
    again = driver_from_state(DriverState.model_validate(stored))
    assert isinstance(again, ScreenedDriver)
    assert [t.hash for t in again.plan.tasks] == [t.hash for t in driver.plan.tasks]
    assert again.decisions == driver.decisions and again.progress() == driver.progress()
    results.run(driver)
    for key, rec in list(again.state.tasks.items()):
        if rec.status is TaskStatus.running:
            again.release(key)
    results.run(again)
    assert again.finalize().properties == driver.finalize().properties
    assert again.report() == driver.report()


def test_a_screening_calculation_that_fails_for_good_stops_the_run(results: Results) -> None:
    driver = make_driver(make_plan(screened_input(0.0)), mode="eager", max_attempts=1)
    batch = driver.next_batch()
    victim = batch[0]
    assert victim.mc == SCREEN_MC
    assert driver.record_failure(victim.hash, "xtb: SCF did not converge") is False
    results.finish(driver, batch[1:])
    assert driver.next_batch() == [] and driver.failed and len(driver.plan.tasks) == 8  # level 2 never decided
    assert driver.failures() == {victim.label: "xtb: SCF did not converge"}
    with pytest.raises(RunFailed, match="after 1 attempts") as err:
        driver.finalize()
    assert f"  {victim.label}: xtb: SCF did not converge" in str(err.value)


def test_a_screening_result_without_an_energy_is_a_clear_error() -> None:
    driver = make_driver(make_plan(screened_input(0.0)), mode="eager")
    *first, last = [t for t in driver.next_batch() if t.mc == SCREEN_MC]
    for t in first:
        driver.record_result(t.hash, ComponentProperties(energy=-5.0))
    with pytest.raises(RuntimeError, match=r'calculation \["\(screen\)".* finished without an energy'):
        driver.record_result(last.hash, ComponentProperties())


def test_bias_comes_from_the_kept_nearest_the_threshold() -> None:
    screen = {(i, 30 + i): (-1) ** i * 1e-3 * i for i in range(1, 30)}  # |increment| grows with i
    target = {s: x + (1e-4 if abs(x) < 0.0205 else 1.0) for s, x in screen.items()}  # the 20 smallest: +1e-4
    assert screening_bias(screen, target) == pytest.approx(1e-4, abs=1e-15)
    assert screening_bias(screen, {}) is None


def test_make_driver_keeps_plain_plans_plain() -> None:
    inp = mbe_input(water_cluster(3), {"gfn2": XTB_GFN2}, {2: "gfn2"}, bsse=["nocp"])
    assert type(make_driver(Plan(inp))) is ManyBodyDriver
    assert type(driver_from_state(DriverState(input=inp))) is ManyBodyDriver
    plan = make_plan(screened_input(0.0))
    stranger = DriverState(input=plan.input, tasks={"0" * 64: {"status": "complete"}})
    with pytest.raises(ValueError, match="not in this plan"):
        make_driver(plan, stranger)
