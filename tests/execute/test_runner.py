"""The runner between driver and backend: retries, exhaustion, checkpoint resume, interruption, stats.

The backend here is an in-process, fault-injecting one: it runs each fragment for real (GFN2-xTB
through the same worker code the local pool uses, ~10 ms per water dimer) unless told to make that
attempt fail, so every recovery path is exercised against real numbers.
"""

from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import pytest
from pebble import ProcessExpired

from qcmb_fractal.drive.state import ComponentProperties, FailureKind
from qcmb_fractal.errors import RunFailed
from qcmb_fractal.execute import Backend, Checkpoint, Runner, TaskOutcome
from qcmb_fractal.execute.worker import WorkerConfig, init_worker, run_fragment
from qcmb_fractal.plan import FragmentTask, Plan
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, assert_same_result, mbe_input

pytestmark = [needs_xtb, pytest.mark.usefixtures("isolated_worker")]


class FaultInjectingInlineBackend(Backend):
    """Runs tasks in this process; ``faults[hash]`` lists what the next attempts do instead of succeeding:
    "fail" (the program reports failure), "raise" (the backend's future raises), "interrupt" (Ctrl-C while
    submitting)."""

    name = "fault-inline"

    def __init__(self, faults: dict[str, list[str]] | None = None, capacity: int | None = None) -> None:
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self._capacity = capacity
        self.calls: Counter[str] = Counter()
        self.started = False
        self.shutdowns = 0

    @property
    def capacity(self) -> int | None:
        return self._capacity

    def start(self, plan: Plan) -> None:
        init_worker(WorkerConfig(input_json=plan.input.model_dump_json(), name="inline-worker"))
        self.started = True

    def submit(self, task: FragmentTask) -> Future:
        fut: Future = Future()
        fault = self.faults.get(task.hash, [None]).pop(0) if self.faults.get(task.hash) else None
        if fault == "interrupt":
            raise KeyboardInterrupt
        self.calls[task.hash] += 1
        if fault == "raise":
            fut.set_exception(ProcessExpired("Abnormal termination", code=-9))
        elif fault == "fail":
            fut.set_result(TaskOutcome(hash=task.hash, success=False, error="SCF failed\n", worker="inline-worker"))
        else:
            fut.set_result(run_fragment(task))
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shutdowns += 1




@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(mbe_input(water_cluster(4), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], driver="gradient"))


@pytest.fixture(scope="module")
def clean(plan: Plan):
    return Runner(plan, FaultInjectingInlineBackend(), progress=False).run()


def test_clean_run_stats(plan: Plan, clean) -> None:
    stats = clean.extras["qcmb_fractal"]
    assert stats["backend"] == "fault-inline" and stats["workers"] is None and stats["utilization"] is None
    assert stats["tasks"] == stats["computed"] == len(plan.tasks) and stats["reused"] == 0
    assert set(stats["task_time"]) == {t.label for t in plan.tasks}
    assert set(stats["worker_busy"]) == {"inline-worker"}
    assert set(stats["level_wall_time"]) == {1, 2, 3}


@pytest.mark.parametrize("mode", ["eager", "levels"])
def test_retries_recover_and_change_nothing(plan: Plan, clean, mode: str) -> None:
    flaky = plan.tasks_at(2)[0]
    backend = FaultInjectingInlineBackend({flaky.hash: ["fail", "raise"]}, capacity=2)
    result = Runner(plan, backend, mode=mode, max_attempts=3, progress=False).run()
    assert backend.calls[flaky.hash] == 3 and backend.shutdowns == 0
    assert result.extras["qcmb_fractal"]["failed_attempts"] == 2
    assert_same_result(result, clean)


def test_exhaustion_reports_each_failure_and_resume_computes_only_the_rest(tmp_path: Path, plan: Plan, clean) -> None:
    bad = plan.tasks_at(3)[0]
    ck_path = tmp_path / "run.sqlite"
    backend = FaultInjectingInlineBackend({bad.hash: ["fail", "fail"]})
    with pytest.raises(RunFailed) as err:
        Runner(plan, backend, checkpoint=Checkpoint(ck_path), max_attempts=2, progress=False).run()
    message = str(err.value)
    assert f"{bad.label}: SCF failed" in message and str(ck_path) in message and "after 2 attempts" in message
    assert err.value.failures == {bad.label: "SCF failed\n"}
    assert len(Checkpoint(ck_path)) == len(plan.tasks) - 1

    again = FaultInjectingInlineBackend()
    result = Runner(plan, again, checkpoint=Checkpoint(ck_path), progress=False).run()
    assert dict(again.calls) == {bad.hash: 1}  # nothing that finished is recomputed
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (len(plan.tasks) - 1, 1)
    assert_same_result(result, clean)


def test_interrupt_keeps_finished_results(tmp_path: Path, plan: Plan, clean) -> None:
    ck_path = tmp_path / "run.sqlite"
    order = sorted(plan.tasks, key=lambda t: (-t.cost, t.hash))
    stop = order[5]
    backend = FaultInjectingInlineBackend({stop.hash: ["interrupt"]}, capacity=1)
    runner = Runner(plan, backend, checkpoint=Checkpoint(ck_path), progress=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert len(Checkpoint(ck_path)) == 5
    assert not any(rec.status.value == "running" for rec in runner.driver.state.tasks.values())
    result = Runner(plan, FaultInjectingInlineBackend(), checkpoint=Checkpoint(ck_path), progress=True).run()
    assert result.extras["qcmb_fractal"]["reused"] == 5
    assert_same_result(result, clean)


def test_cluster_results_survive_a_resume(tmp_path: Path) -> None:
    plan = Plan(
        mbe_input(
            water_cluster(3), {"gfn2": XTB_GFN2}, {2: "gfn2"}, bsse=["nocp"], protocols={"cluster_results": "all"}
        )
    )
    ck_path = tmp_path / "run.sqlite"
    first = Runner(plan, FaultInjectingInlineBackend(), checkpoint=Checkpoint(ck_path), progress=False).run()
    assert set(first.cluster_results) == {label for t in plan.tasks for label in t.labels}
    assert all(r.stdout is None for r in first.cluster_results.values())  # not asked for (--keep-stdout)
    ck = Checkpoint(ck_path)
    ck.db.execute("DELETE FROM results WHERE hash = ?", (plan.tasks[0].hash,))
    # a row of a run that kept only properties cannot give this run its AtomicResult: computed again
    slim = TaskOutcome(hash=plan.tasks[1].hash, success=True, properties=ComponentProperties(energy=-1.0))
    ck.put(slim, plan.tasks[1].label)
    ck.close()
    second = Runner(plan, FaultInjectingInlineBackend(), checkpoint=Checkpoint(ck_path), progress=False).run()
    assert set(second.cluster_results) == set(first.cluster_results)
    assert second.extras["qcmb_fractal"]["computed"] == 2
    assert second.return_result == first.return_result
    third = Runner(plan, FaultInjectingInlineBackend(), progress=False).run()  # no checkpoint at all
    assert set(third.cluster_results) == set(first.cluster_results)


def test_exceptions_become_typed_failures() -> None:
    def kind_and_text(exc: BaseException) -> tuple[str, str]:
        outcome = TaskOutcome.from_exception("h", exc, worker="w")
        assert (outcome.success, outcome.worker) == (False, "w")
        return outcome.kind.value, outcome.error

    assert kind_and_text(ProcessExpired("gone", code=-9)) == (
        "crash",
        "worker process died (signal 9) while running this calculation",
    )
    assert "exit code 3" in kind_and_text(ProcessExpired("gone", code=3))[1]
    assert kind_and_text(TimeoutError(30.0)) == (
        "timeout",
        "calculation exceeded the per-task timeout (30.0) and was killed",
    )
    assert kind_and_text(TimeoutError())[1] == "calculation exceeded the per-task timeout and was killed"
    assert kind_and_text(ValueError("bad")) == ("crash", "ValueError: bad")


def test_worker_reports_program_and_harness_failures(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    task = plan.tasks_at(1)[0]
    with pytest.raises(RuntimeError, match="before init_worker"):
        run_fragment(task)
    bad_method = Plan(mbe_input(water_cluster(2), {"x": ("xtb", "gfn9-xtb", None)}, {2: "x"}, bsse=["nocp"]))
    init_worker(WorkerConfig(input_json=bad_method.input.model_dump_json(), memory=1.0, scratch_directory="/tmp"))
    out = run_fragment(bad_method.tasks[0])
    assert not out.success and out.error and "gfn9-xtb" in out.error and out.worker == "worker"
    assert out.kind is FailureKind.input_error
    init_worker(WorkerConfig(input_json=plan.input.model_dump_json()))
    done = run_fragment(task)
    assert done.success and done.properties.energy is not None and done.result is None  # properties suffice
    init_worker(WorkerConfig(input_json=plan.input.model_dump_json(), keep_stdout=True))
    assert run_fragment(task).result.stdout  # asked for: the whole result, the program's output with it

    import qcengine

    def broken_harness(*_, **__):
        raise KeyError("harness bug")

    monkeypatch.setattr(qcengine, "compute", broken_harness)
    out = run_fragment(bad_method.tasks[0])
    assert not out.success and "KeyError: 'harness bug'" in out.error and out.kind is FailureKind.program_error
