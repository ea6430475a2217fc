"""The driver's state machine: ordering, failures, retries, reset, release and resume.

No QC program runs here: fragment results are made-up numbers (a deterministic function of the
fragment), because what is under test is the bookkeeping, and the final analysis is QCManyBody's own.
"""

import json

import numpy as np
import pytest

from qcmb_fractal.drive import ComponentProperties, DriverState, FailureKind, ManyBodyDriver, TaskStatus
from qcmb_fractal.errors import RunFailed
from qcmb_fractal.plan import FragmentTask, Plan
from qcmb_fractal.testing.fakes import fake_atomic_result
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.reference import NWCHEM_HF, mbe_input


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(mbe_input(water_cluster(4), {"hf": NWCHEM_HF}, {3: "hf"}, bsse=["nocp", "cp"]))


def made_up(task: FragmentTask) -> ComponentProperties:
    """A deterministic energy per fragment calculation, distinct for every (real, basis)."""
    energy = -76.0 * len(task.real) - 1e-3 * sum(task.real) - 1e-5 * sum(task.basis) - 1e-7 * len(task.basis)
    return ComponentProperties(energy=energy)


def finish(driver: ManyBodyDriver, tasks: list[FragmentTask]) -> None:
    for t in tasks:
        driver.record_result(t.hash, made_up(t), worker="w1", wall_time=0.1)


def run_all(driver: ManyBodyDriver) -> None:
    while batch := driver.next_batch():
        finish(driver, batch)


def largest_first(tasks: list[FragmentTask]) -> list[FragmentTask]:
    return sorted(tasks, key=lambda t: (-t.cost, t.hash))


def test_levels_mode_hands_out_one_level_at_a_time_largest_first(plan: Plan) -> None:
    driver = ManyBodyDriver(plan, mode="levels")
    for level in plan.levels:
        first = driver.next_batch(limit=3)
        rest = driver.next_batch()
        assert first + rest == largest_first(plan.tasks_at(level))
        assert driver.next_batch() == []  # nothing of the next level while this one runs
        assert driver.active_level == level
        finish(driver, first + rest)
    assert driver.active_level is None and driver.complete and driver.finished
    assert driver.next_batch() == []


def test_eager_mode_hands_out_everything_largest_first(plan: Plan) -> None:
    driver = ManyBodyDriver(plan, mode="eager")
    batch = driver.next_batch(limit=5) + driver.next_batch()
    assert batch == largest_first(plan.tasks)
    assert batch[0].level == 3 and batch[-1].level == 1
    assert all(driver.status(t) is TaskStatus.running for t in batch)
    progress = driver.progress()
    assert [(p.level, p.running, p.waiting) for p in progress] == [
        (lvl, len(plan.tasks_at(lvl)), 0) for lvl in plan.levels
    ]


def test_result_equals_direct_qcmanybody_analysis(plan: Plan) -> None:
    driver = ManyBodyDriver(plan)
    run_all(driver)
    result = driver.finalize()
    props = {label: {"energy": made_up(t).energy} for t in plan.tasks for label in t.labels}
    expected = plan.core.analyze(props)
    assert result.return_result == expected["ret_energy"]
    assert result.properties.calcinfo_nmbe == len(props)
    assert result.cluster_results == {}


def test_retries_then_exhaustion(plan: Plan) -> None:
    driver = ManyBodyDriver(plan, mode="eager", max_attempts=2)
    victim, *others = driver.next_batch()
    assert driver.record_failure(victim.hash, "SCF did not converge", worker="w1") is True
    assert driver.record(victim).attempts == 1 and driver.status(victim) is TaskStatus.waiting
    assert driver.next_batch() == [victim]
    assert driver.record_failure(victim.hash, "Traceback ...\nSCF did not converge again", worker="w2") is False
    assert driver.status(victim) is TaskStatus.error
    assert not driver.failed  # other tasks are still running
    finish(driver, others)
    assert driver.failed and driver.finished and not driver.complete
    assert driver.failures() == {victim.label: "Traceback ...\nSCF did not converge again"}
    assert driver.failure_table() == f"  {victim.label}: SCF did not converge again"
    assert sum(p.error for p in driver.progress()) == 1
    with pytest.raises(RunFailed) as err:
        driver.finalize()
    assert err.value.failures == driver.failures() and "after 2 attempts" in str(err.value)


def test_levels_mode_finishes_the_level_but_stops_before_the_next(plan: Plan) -> None:
    driver = ManyBodyDriver(plan, mode="levels", max_attempts=1)
    victim, *others = driver.next_batch()
    assert driver.record_failure(victim.hash, "") is False
    assert driver.failures() == {victim.label: "unknown error"}
    finish(driver, others)
    assert driver.next_batch() == [] and driver.failed
    assert driver.reset_errors() == 1
    assert driver.record(victim).attempts == 0 and not driver.failed
    assert driver.next_batch() == [victim]
    finish(driver, [victim])
    assert driver.next_batch() == largest_first(plan.tasks_at(2))


def test_release_returns_a_task_without_counting_an_attempt(plan: Plan) -> None:
    driver = ManyBodyDriver(plan)
    task = driver.next_batch(limit=1)[0]
    driver.release(task.hash)
    assert driver.status(task) is TaskStatus.waiting and driver.record(task).attempts == 0
    finish(driver, [task])
    driver.release(task.hash)  # a finished task stays finished
    assert driver.status(task) is TaskStatus.complete


def test_failure_kinds_decide_retries_and_the_driver_keeps_its_own_counts(plan: Plan) -> None:
    driver = ManyBodyDriver(plan, max_attempts=3)
    bad_input, crashed, timed_out, *others = driver.next_batch()
    assert driver.record_failure(bad_input.hash, "input_error: no such method", kind=FailureKind.input_error) is False
    assert driver.record_failure(crashed.hash, "worker died", kind=FailureKind.crash) is True
    assert driver.record_failure(timed_out.hash, "too slow", kind=FailureKind.timeout) is True
    assert driver.record(bad_input).failure is FailureKind.input_error and driver.record(bad_input).attempts == 1
    assert driver.count(TaskStatus.error) == 1 and driver.count(TaskStatus.waiting) == 2
    assert driver.count(TaskStatus.running) == len(others) and driver.failed_attempts == 3
    assert [t for t, _ in driver.failed_records()] == [bad_input]

    assert driver.release_running() == len(others)
    assert driver.count(TaskStatus.running) == 0 and driver.count(TaskStatus.waiting) == len(plan.tasks) - 1
    driver.restart_failed(crashed.hash)  # only a task that failed for good restarts
    assert driver.status(crashed) is TaskStatus.waiting and driver.record(crashed).attempts == 1
    driver.restart_failed(bad_input.hash)
    assert driver.status(bad_input) is TaskStatus.running and driver.record(bad_input).attempts == 0
    finish(driver, [crashed])
    assert driver.record(crashed).failure is None and driver.count(TaskStatus.complete) == 1
    assert FailureKind.from_error_type("input_error") is FailureKind.input_error
    assert FailureKind.from_error_type("convergence_error") is FailureKind.program_error
    assert FailureKind.from_error_type(None) is FailureKind.program_error


def test_unknown_tasks_are_refused(plan: Plan) -> None:
    driver = ManyBodyDriver(plan)
    with pytest.raises(KeyError, match="no task"):
        driver.record_result("0" * 64, ComponentProperties(energy=0.0))
    state = DriverState(input=plan.input, tasks={"f" * 64: {"status": "complete"}})
    with pytest.raises(ValueError, match="not in this plan"):
        ManyBodyDriver(plan, state)


def test_finalize_refuses_unfinished_work(plan: Plan) -> None:
    driver = ManyBodyDriver(plan)
    driver.next_batch(limit=1)
    with pytest.raises(RuntimeError, match="before every fragment calculation finished"):
        driver.finalize()


@pytest.mark.parametrize("mode", ["levels", "eager"])
def test_resume_from_serialized_state_gives_identical_results(plan: Plan, mode: str) -> None:
    straight = ManyBodyDriver(plan, mode=mode)
    run_all(straight)
    expected = straight.finalize()

    first = ManyBodyDriver(plan, mode=mode, max_attempts=4)
    batch = first.next_batch()
    finish(first, batch[: len(batch) // 2])
    first.record_failure(batch[-1].hash, "killed")
    blob = first.state.model_dump_json()

    state = DriverState.model_validate_json(blob)
    assert state.mode == mode and state.max_attempts == 4
    resumed = ManyBodyDriver.from_state(state)  # rebuilds the plan from the stored input
    assert [t.hash for t in resumed.plan.tasks] == [t.hash for t in plan.tasks]
    assert resumed.record(batch[-1]).attempts == 1
    lost = [t for t in resumed.plan.tasks if resumed.status(t) is TaskStatus.running]
    assert {t.hash for t in lost} == {t.hash for t in batch[len(batch) // 2 : -1]}
    for t in lost:  # the caller knows these died with the old process
        resumed.release(t.hash)
    run_all(resumed)
    result = resumed.finalize()
    assert result.return_result == expected.return_result
    assert result.properties == expected.properties
    assert json.loads(blob)["tasks"][batch[0].hash]["properties"]["energy"] == made_up(batch[0]).energy


def test_cluster_results_are_expanded_to_every_label() -> None:
    twins = {"hf-a": NWCHEM_HF, "hf-b": NWCHEM_HF}
    plan = Plan(
        mbe_input(water_cluster(3), twins, {1: "hf-a", 3: "hf-b"}, bsse=["nocp"], protocols={"cluster_results": "all"})
    )
    driver = ManyBodyDriver(plan)
    run_all(driver)
    shared = next(t for t in plan.tasks if len(t.labels) == 2)
    atomic = fake_atomic_result(plan, shared, energy=made_up(shared).energy)
    result = driver.finalize({shared.hash: atomic})
    assert set(result.cluster_results) == set(shared.labels)


def test_component_properties_fall_back_to_return_result() -> None:
    """xtb's harness leaves properties.return_gradient empty; the gradient is in return_result."""
    plan = Plan(
        mbe_input(water_cluster(2), {"x": ("xtb", "gfn2-xtb", None)}, {2: "x"}, bsse=["nocp"], driver="gradient")
    )
    task = plan.tasks_at(2)[0]
    grad = np.arange(18, dtype=float).reshape(6, 3) / 100
    result = fake_atomic_result(plan, task, energy=-10.0, return_result=grad)
    props = ComponentProperties.from_atomic_result(result)
    assert props.energy == -10.0 and props.hessian is None
    np.testing.assert_array_equal(props.as_arrays()["gradient"], grad)
    stated = fake_atomic_result(plan, task, energy=-10.0, gradient=grad * 2, return_result=grad)
    np.testing.assert_array_equal(ComponentProperties.from_atomic_result(stated).gradient, grad * 2)
    hess = ComponentProperties(energy=-1.0, hessian=np.eye(18).tolist()).as_arrays()
    assert hess["hessian"].shape == (18, 18) and "gradient" not in hess
