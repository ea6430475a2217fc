"""The runner with a screened plan: an interrupted run resumes from its checkpoint, replaying the screening
decisions and recomputing nothing committed; with nothing screened, the local backend's result is
QCManyBody's own. Real GFN2-xTB targets and GFN1-xTB screening throughout.
"""

import sqlite3
from concurrent.futures import Future
from pathlib import Path

import pytest
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.execute import Backend, Checkpoint, Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.worker import WorkerConfig, init_worker, run_fragment
from qcmb_fractal.plan import FragmentTask, Plan, ScreenedPlan, ScreeningSettings, make_plan, with_screening
from qcmb_fractal.plan.screening import SCREEN_MC
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, assert_same_result, mbe_input, serial_reference

pytestmark = [needs_xtb, pytest.mark.usefixtures("isolated_worker")]


def screened(threshold: float, driver: str = "energy", n: int = 5):
    inp = mbe_input(water_cluster(n), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], driver=driver)
    return with_screening(inp, ScreeningSettings(program="xtb", method="gfn1-xtb", threshold=threshold))


class InlineBackend(Backend):
    """Runs each fragment in this process with the workers' own code, one at a time; Ctrl-C at submit ``stop``."""

    name = "inline"

    def __init__(self, stop: int | None = None) -> None:
        self.stop = stop
        self.calls: list[str] = []

    @property
    def capacity(self) -> int:
        return 1

    def start(self, plan: Plan) -> None:
        init_worker(WorkerConfig(input_json=plan.input.model_dump_json(), name="inline-worker"))

    def submit(self, task: FragmentTask) -> Future:
        if len(self.calls) == self.stop:
            raise KeyboardInterrupt
        self.calls.append(task.hash)
        fut: Future = Future()
        fut.set_result(run_fragment(task))
        return fut




@pytest.fixture(scope="module")
def clean() -> ManyBodyResult:
    return Runner(make_plan(screened(0.05)), InlineBackend(), progress=False).run()


def committed(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT hash FROM results")}


def test_interrupted_screened_run_resumes_without_recomputing(tmp_path: Path, clean: ManyBodyResult) -> None:
    ck = tmp_path / "run.sqlite"
    first = make_plan(screened(0.05))
    assert isinstance(first, ScreenedPlan)
    with pytest.raises(KeyboardInterrupt):
        Runner(first, InlineBackend(stop=19), checkpoint=Checkpoint(ck), progress=False).run()
    saved = committed(ck)
    assert len(saved) == 19
    # screening ran ahead: the checkpoint holds decided levels, which the resume must replay to find its tasks
    assert {first.by_hash[h].level for h in saved if first.by_hash[h].mc == SCREEN_MC} == {1, 2, 3}

    again = InlineBackend()
    fresh = make_plan(screened(0.05))
    result = Runner(fresh, again, checkpoint=Checkpoint(ck), progress=True).run()
    assert again.calls and not set(again.calls) & saved  # nothing committed is computed again
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"], stats["tasks"]) == (19, len(fresh.tasks) - 19, len(fresh.tasks))
    assert_same_result(result, clean)
    assert stats["screening"] == clean.extras["qcmb_fractal"]["screening"]
    report = stats["screening"]
    assert report["target_calculations"] + report["screen_calculations"] == len(fresh.tasks)
    assert 0 < report["target_calculations"] < report["full_calculations"] == 5 + 10 + 10


def test_nothing_screened_on_the_local_backend_equals_qcmanybody() -> None:
    inp = screened(0.0, driver="gradient", n=4)
    plan = make_plan(inp)
    with LocalBackend(2) as backend:
        result = Runner(plan, backend, mode="levels", progress=False).run()
    assert_same_result(result, serial_reference(inp))
    stats = result.extras["qcmb_fractal"]
    assert stats["computed"] == len(plan.tasks) == 2 * 14 and stats["failed_attempts"] == 0
    assert stats["screening"]["target_calculations"] == stats["screening"]["full_calculations"] == 14
    assert set(stats["level_wall_time"]) == {1, 2, 3}
