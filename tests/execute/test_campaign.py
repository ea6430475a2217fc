"""A campaign of several inputs on one backend: each input's result is its single run's, the queue is largest
first across inputs, an interrupted campaign resumes from the inputs' checkpoints, and one input's failure
leaves the others' results. Real GFN2-xTB (and GFN1-xTB screening) through the workers' own code, in process.
"""

import csv
import io
from concurrent.futures import Future
from pathlib import Path

import pytest
from pebble import ProcessExpired
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.drive import TaskStatus
from qcmb_fractal.errors import RunFailed
from qcmb_fractal.execute import Backend, Checkpoint, Runner, TaskOutcome
from qcmb_fractal.execute import worker as worker_module
from qcmb_fractal.execute.campaign import SUMMARY_COLUMNS, Campaign, Member, MemberOutcome, summary_csv
from qcmb_fractal.execute.worker import SourcedTask, WorkerConfig, init_worker, run_fragment, shipped_inputs
from qcmb_fractal.plan import FragmentTask, Plan, ScreeningSettings, make_plan, with_screening
from qcmb_fractal.plan.screening import SCREEN_MC
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, assert_same_result, mbe_input

pytestmark = [needs_xtb, pytest.mark.usefixtures("isolated_worker")]


class InlineBackend(Backend):
    """Runs each task in this process with the workers' code, started from whatever plan ``start`` gets (a
    campaign's ships every input); Ctrl-C at submit number ``stop``; ``fail`` hashes report a program failure,
    ``crash`` hashes' first attempt raises as a dead worker does."""

    name = "inline"

    def __init__(
        self,
        capacity: int | None = 2,
        stop: int | None = None,
        fail: frozenset[str] = frozenset(),
        crash: frozenset[str] = frozenset(),
    ) -> None:
        self._capacity = capacity
        self.stop = stop
        self.fail = fail
        self.crash = set(crash)
        self.submitted: list[FragmentTask] = []
        self.started = False

    @property
    def capacity(self) -> int | None:
        return self._capacity

    def start(self, plan: Plan) -> None:
        init_worker(WorkerConfig(**shipped_inputs(plan), name="inline-worker"))
        self.started = True

    def submit(self, task: FragmentTask) -> Future:
        if len(self.submitted) == self.stop:
            raise KeyboardInterrupt
        self.submitted.append(task)
        fut: Future = Future()
        if task.hash in self.fail:
            fut.set_result(TaskOutcome(hash=task.hash, success=False, error="input_error: no such method\n"))
        elif task.hash in self.crash:
            self.crash.discard(task.hash)
            fut.set_exception(ProcessExpired("Abnormal termination", code=-9))
        else:
            fut.set_result(run_fragment(task))
        return fut




def _plans() -> dict[str, Plan]:
    """A dimer MBE(2), a trimer gradient MBE(3) and a screened tetramer: different molecules, drivers, sizes."""
    screened = with_screening(
        mbe_input(water_cluster(4), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"]),
        ScreeningSettings(program="xtb", method="gfn1-xtb", threshold=0.5),
    )
    return {
        "dimer": Plan(mbe_input(water_cluster(2), {"gfn2": XTB_GFN2}, {2: "gfn2"}, bsse=["nocp"])),
        "trimer": Plan(mbe_input(water_trimer(), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], driver="gradient")),
        "screened": make_plan(screened),
    }


@pytest.fixture(scope="module")
def singles() -> dict[str, ManyBodyResult]:
    out = {}
    for name, plan in _plans().items():
        out[name] = Runner(plan, InlineBackend(), progress=False).run()
        worker_module._BUILDER = worker_module._CONFIG = None
    return out


def _campaign(tmp_path: Path | None, backend: InlineBackend, **kwargs) -> tuple[Campaign, dict]:
    members = [
        Member(
            name=name,
            plan=plan,
            output=Path(f"{name}.result.json"),
            checkpoint=Checkpoint(tmp_path / f"{name}.sqlite") if tmp_path else None,
        )
        for name, plan in _plans().items()
    ]
    heard: dict[str, ManyBodyResult | RunFailed | None] = {}
    campaign = Campaign(
        members, backend, progress=False, on_finished=lambda m, r, f: heard.__setitem__(m.name, r or f), **kwargs
    )
    return campaign, heard


def _by_name(campaign: Campaign, found: dict) -> dict:
    return {campaign.members[key].name: value for key, value in found.items()}


def _energies(result: ManyBodyResult) -> dict[str, float]:
    return {k: v for k, v in result.properties.model_dump().items() if k.endswith("_energy") or "_energy_" in k}


@pytest.mark.parametrize("capacity", [2, None])
def test_each_input_equals_its_single_run_and_largest_go_first(singles, capacity: int | None) -> None:
    backend = InlineBackend(capacity=capacity)
    campaign, heard = _campaign(None, backend)
    campaign.run()
    results = _by_name(campaign, campaign.results)
    assert set(results) == set(heard) == set(singles) and not campaign.failures
    for name, result in results.items():
        assert_same_result(result, singles[name])
        expected = _energies(singles[name])
        assert expected and _energies(result) == pytest.approx(expected, abs=1e-10, rel=0)
        stats = result.extras["qcmb_fractal"]
        assert stats["computed"] == stats["tasks"] and stats["reused"] == 0
    assert "screening" in results["screened"].extras["qcmb_fractal"]
    assert all(isinstance(t, SourcedTask) for t in backend.submitted)
    # the dimer's monomers are the screened tetramer's first two: a calculation inputs share runs once
    shared = {t.hash for t in _plans()["dimer"].tasks} & {t.hash for t in campaign.runners["2"].plan.tasks}
    hashes = [t.hash for t in backend.submitted]
    assert shared and len(hashes) == len(set(hashes))
    assert {t.source for t in backend.submitted} == {"0", "1", "2"}
    # Screening unlocks work, so it goes first; the first targets handed out are the largest of all inputs.
    assert backend.submitted[0].mc == SCREEN_MC
    targets = [t.cost for t in backend.submitted if t.mc != SCREEN_MC]
    largest = max(t.cost for p in _plans().values() for t in p.tasks if t.mc != SCREEN_MC)
    assert targets[0] == largest
    # the unscreened inputs' tasks are all ready at once: they go in one merged order, largest first
    plain = [t.cost for t in backend.submitted if t.source != "2"]
    assert plain == sorted(plain, reverse=True) and len(set(plain)) > 1


def test_interrupted_campaign_resumes_without_recomputing(tmp_path: Path, singles) -> None:
    first = InlineBackend(capacity=1, stop=9)
    campaign, _ = _campaign(tmp_path, first)
    with pytest.raises(KeyboardInterrupt):
        campaign.run()
    done = {t.hash for t in first.submitted}
    assert len(done) == 9
    stored = sum(len(m.checkpoint) for m in campaign.members.values() if m.checkpoint is not None)
    assert stored >= 9  # a shared calculation is stored in each of its inputs' checkpoints
    statuses = {rec.status for r in campaign.runners.values() for rec in r.driver.state.tasks.values()}
    assert TaskStatus.running not in statuses  # handed out but unfinished tasks went back to the queue

    again = InlineBackend()
    resumed, _ = _campaign(tmp_path, again)
    resumed.run()
    assert not done & {t.hash for t in again.submitted}  # nothing checkpointed is computed again
    stats = {name: r.extras["qcmb_fractal"] for name, r in _by_name(resumed, resumed.results).items()}
    assert sum(s["reused"] for s in stats.values()) == stored
    for name, result in _by_name(resumed, resumed.results).items():
        assert_same_result(result, singles[name])

    third = InlineBackend()
    complete, _ = _campaign(tmp_path, third)
    complete.run()
    assert len(complete.results) == 3 and not third.started  # a finished campaign reads its checkpoints, no pool


def test_a_failing_input_leaves_the_others(singles) -> None:
    bad = _plans()["trimer"].tasks_at(2)[0]
    crashed = _plans()["dimer"].tasks_at(2)[0]  # retried, as in a single run
    backend = InlineBackend(fail=frozenset({bad.hash}), crash=frozenset({crashed.hash}))
    campaign, heard = _campaign(None, backend)
    campaign.run()
    assert [t.hash for t in backend.submitted].count(crashed.hash) == 2
    failures = _by_name(campaign, campaign.failures)
    assert set(failures) == {"trimer"} and isinstance(heard["trimer"], RunFailed)
    assert f"{bad.label}: input_error: no such method" in str(failures["trimer"])
    results = _by_name(campaign, campaign.results)
    assert set(results) == {"dimer", "screened"}
    for name, result in results.items():
        assert_same_result(result, singles[name])
    assert results["dimer"].extras["qcmb_fractal"]["failed_attempts"] == 1


def test_summary_rows_hold_every_level_and_say_why_an_input_has_none(singles) -> None:
    outcomes = [
        MemberOutcome(name="dimer.json", output=Path("dimer.result.json"), result=singles["dimer"]),
        MemberOutcome(name="trimer.json", output=Path("trimer.result.json"), result=singles["trimer"]),
        MemberOutcome(name="broken.json", status="bad input", error="broken.json is not valid JSON: ...\nmore"),
    ]
    rows = list(csv.DictReader(io.StringIO(summary_csv(outcomes))))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [(r["input"], r["bsse_type"], r["nbody"]) for r in rows] == [
        ("dimer.json", "nocp", "1"),
        ("dimer.json", "nocp", "2"),
        ("trimer.json", "nocp", "1"),
        ("trimer.json", "nocp", "2"),
        ("trimer.json", "nocp", "3"),
        ("broken.json", "", ""),
    ]
    props = singles["trimer"].properties
    trimer3 = rows[4]
    assert float(trimer3["total_energy_eh"]) == props.nocp_corrected_total_energy_through_3_body
    assert float(trimer3["interaction_energy_eh"]) == props.nocp_corrected_interaction_energy_through_3_body
    assert float(trimer3["interaction_energy_kcal_mol"]) == pytest.approx(
        props.nocp_corrected_interaction_energy_through_3_body * 627.5094740631, rel=1e-9
    )
    assert rows[-1]["status"] == "bad input" and rows[-1]["error"] == "broken.json is not valid JSON: ..."
    assert rows[0]["status"] == "ok" and rows[0]["result_file"] == "dimer.result.json" and rows[0]["error"] == ""
