"""The MPI backend under a real ``mpiexec`` with 3-4 ranks, against QCManyBody's serial computer.

Every run goes through ``mpiexec -n N qcmb-fractal run INPUT --backend mpi`` as a user types it, except
the fault-injection runs, which use the Runner API in a small driver so they can plant the fault.
"""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.cases import CASES
from qcmb_fractal.testing.molecules import water_cluster, water_cluster_text
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, assert_same_result, mbe_input, serial_reference

if not os.environ.get("CI"):  # under CI the mpi extra is installed, and its absence must fail
    pytest.importorskip("mpi4py", reason="the mpi extra is not installed: pip install 'qcmb-fractal[mpi]'")

CLI = [sys.executable, "-m", "qcmb_fractal.cli", "-v", "run"]

# Runs again as __mp_main__ in every rank's compute child: there, every calculation on rank 2 fails
# (QCMB_TEST_FAULT=fail) or takes a second longer (QCMB_TEST_FAULT=slow).
FAULT_DRIVER = """
import logging, multiprocessing, os, sys, time
import qcengine
from qcmb_fractal.execute import Checkpoint, Runner
from qcmb_fractal.execute.backends.mpi import MPIBackend
from qcmb_fractal.logs import LOG_FORMAT
from qcmb_fractal.plan import Plan, load_input

_real_compute = qcengine.compute

def fault_compute(*args, **kwargs):
    if multiprocessing.current_process().name == "mpi-rank-2":
        if os.environ["QCMB_TEST_FAULT"] == "fail":
            raise RuntimeError("fault injected on rank 2")
        time.sleep(1.0)
    return _real_compute(*args, **kwargs)

qcengine.compute = fault_compute

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    backend = MPIBackend()
    if not backend.is_driver:
        sys.exit(backend.serve())
    plan = Plan(load_input(sys.argv[1]))
    with backend:
        result = Runner(plan, backend, checkpoint=Checkpoint("result.sqlite"), progress=False).run()
    open("result.json", "w").write(result.model_dump_json())
"""


def xtb_input(waters: int, max_nbody: int, driver: str = "energy") -> ManyBodyInput:
    return mbe_input(water_cluster(waters), {"gfn2": XTB_GFN2}, {max_nbody: "gfn2"}, bsse=["nocp"], driver=driver)


@cache
def launcher() -> tuple[str, str]:
    """The mpiexec that belongs to the installed MPI (the wheel's, beside this Python) and its version text."""
    exe = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpi4py is installed but no mpiexec is on PATH; pip install 'qcmb-fractal[mpi]' brings one")
    return exe, subprocess.run([exe, "--version"], capture_output=True, text=True).stdout


def open_mpi_major() -> int | None:
    match = re.search(r"\((?:Open MPI|OpenRTE)\) (\d+)\.", launcher()[1])
    return int(match.group(1)) if match else None


def mpiexec(*launch_flags: str) -> list[str]:
    """The launch command, with what Open MPI needs on a 2-core machine and as root."""
    if open_mpi_major() is None:
        return [launcher()[0], *launch_flags]
    return [launcher()[0], "--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else []), *launch_flags]


def launch(
    tmp_path: Path, ranks: int, inp: ManyBodyInput, *options: str, launch_flags: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``mpiexec -n RANKS qcmb-fractal run input.json --backend mpi``: result.json, checkpoint result.sqlite."""
    (tmp_path / "input.json").write_text(inp.model_dump_json())
    cmd = [*mpiexec(*launch_flags), "-n", str(ranks), *CLI, "input.json", "--backend", "mpi", "--no-progress"]
    cmd += ["-o", "result.json", *options]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch_fault_driver(tmp_path: Path, ranks: int, inp: ManyBodyInput, fault: str) -> subprocess.Popen:
    """The Runner API under mpiexec, with a fault planted in rank 2's compute child."""
    (tmp_path / "fault_driver.py").write_text(FAULT_DRIVER)
    (tmp_path / "input.json").write_text(inp.model_dump_json())
    cmd = [*mpiexec(), "-n", str(ranks), sys.executable, "fault_driver.py", "input.json"]
    env = {**os.environ, "QCMB_TEST_FAULT": fault}
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, tmp_path: Path) -> tuple[ManyBodyResult, str]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return ManyBodyResult.model_validate_json((tmp_path / "result.json").read_text()), out


def serial(inp: ManyBodyInput) -> ManyBodyResult:
    """QCManyBody's serial computer on ``inp`` (cached per session), read back from JSON like the CLI's
    output (arrays come back flat from JSON on both sides, so shapes compare like with like)."""
    return ManyBodyResult.model_validate_json(serial_reference(inp).model_dump_json())


def world_rank(process: psutil.Process) -> str | None:
    """The MPI rank a launched process was given (MPICH's Hydra or Open MPI), read from its environment."""
    try:
        env = process.environ()
    except psutil.Error:
        return None
    return env.get("PMI_RANK", env.get("OMPI_COMM_WORLD_RANK"))


def kill_rank_after_first_result(proc: subprocess.Popen, checkpoint: Path, rank: str) -> list[psutil.Process]:
    """SIGKILL one rank once the first result is checkpointed; returns every process of the job at that moment."""
    while checkpoint_rows(checkpoint) < 1 and proc.poll() is None:
        time.sleep(0.01)
    tree = psutil.Process(proc.pid).children(recursive=True)
    next(p for p in tree if world_rank(p) == rank).send_signal(signal.SIGKILL)
    return tree


def checkpoint_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


# The local backend's reference cases minus the slow hexamer and the water10 xtb pair (1-2 min here, and
# xtb through MPI is covered below): ghost atoms, vmfc, gradients, Hessians, multilevel and mixed programs.
REFERENCE_CASES = [
    pytest.param(name, 4 if "gradient" in name else 3, marks=marks, id=name)
    for name, (_, _, marks) in CASES.items()
    if not name.startswith("water10") and not any(getattr(m, "name", None) == "slow" for m in marks)
]


@pytest.mark.parametrize(("case", "ranks"), REFERENCE_CASES)
def test_reference_cases_equal_qcmanybody_serial(tmp_path, case, ranks):
    build, mode, _ = CASES[case]
    inp = build()
    result, _ = finish(launch(tmp_path, ranks, inp, "--mode", mode), tmp_path)
    assert_same_result(result, serial(inp))
    stats = result.extras["qcmb_fractal"]
    assert (stats["backend"], stats["workers"], stats["computed"]) == ("mpi", ranks - 1, len(Plan(inp).tasks))


@needs_xtb
def test_every_rank_works_and_logs_name_their_rank(tmp_path):
    inp = xtb_input(4, 3)
    result, log = finish(launch(tmp_path, 3, inp), tmp_path)
    assert_same_result(result, serial(inp))
    stats = result.extras["qcmb_fractal"]
    assert (stats["tasks"], stats["computed"], stats["reused"], stats["failed_attempts"]) == (14, 14, 0, 0)
    assert set(stats["worker_busy"]) == {"mpi-rank-1", "mpi-rank-2"}
    assert "mpi-rank-0 INFO qcmb_fractal.execute.backends.mpi: mpi backend: 2 worker ranks" in log
    assert re.search(r"mpi-rank-0 INFO qcmb_fractal.execute.backends.mpi: mpi backend: 14 results in \d+ messages", log)
    assert "14 calculations (14 computed, 0 from checkpoint)" in log
    records = [line for line in log.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert records and all(re.match(r"\S+ \S+ mpi-rank-\d+ ", line) for line in records)


@pytest.mark.parametrize(
    ("ranks", "args", "message"),
    [
        (3, ["missing.xyz"], "error: cannot read input file missing.xyz"),
        (1, ["cluster.xyz"], "error: the mpi backend needs at least 2 MPI ranks"),
        (3, ["cluster.xyz", "--workers", "2"], "error: --workers does not apply to --backend mpi"),
    ],
)
def test_bad_setup_is_one_clear_error_and_every_rank_ends(tmp_path, ranks, args, message):
    (tmp_path / "cluster.xyz").write_text(water_cluster_text(3))
    cmd = [*mpiexec(), "-n", str(ranks), *CLI, *args, "--program", "xtb", "--method", "gfn2-xtb", "--backend", "mpi"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_xtb
def test_failing_rank_tasks_are_retried_on_another_rank(tmp_path):
    inp = xtb_input(4, 2)
    result, log = finish(launch_fault_driver(tmp_path, 3, inp, "fail"), tmp_path)
    assert_same_result(result, serial(inp))
    stats = result.extras["qcmb_fractal"]
    assert stats["failed_attempts"] >= 1
    assert stats["computed"] == 10
    assert set(stats["worker_busy"]) == {"mpi-rank-1"}  # every success came from the healthy rank
    assert re.search(r"failed on mpi-rank-2 \(attempt 1 of 3\), will retry: .*fault injected on rank 2", log)


@needs_xtb
def test_a_straggling_rank_gets_less_work(tmp_path):
    inp = xtb_input(4, 2)
    result, _ = finish(launch_fault_driver(tmp_path, 3, inp, "slow"), tmp_path)
    with sqlite3.connect(tmp_path / "result.sqlite") as db:
        done = dict(db.execute("SELECT worker, COUNT(*) FROM results GROUP BY worker").fetchall())
    # 10 calculations: rank 2 takes over a second each, rank 1 a few ms, so rank 1 takes what rank 2 has not started
    assert done.get("mpi-rank-1", 0) >= 7, done
    assert sum(done.values()) == 10
    assert_same_result(result, serial(inp))


# QCManyBody's serial computer on xtb_input(8, 3) (92 xtb calls; 10-35 s here, so recorded, not redone)
WATER8_MBE3_SERIAL = -0.053886726221755055


@needs_xtb
@pytest.mark.slow
def test_killed_rank_ends_run_and_rerun_recomputes_nothing(tmp_path):
    inp = xtb_input(8, 3)
    total = 8 + 28 + 56
    proc = launch(tmp_path, 3, inp)
    tree = kill_rank_after_first_result(proc, tmp_path / "result.sqlite", "2")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    saved = checkpoint_rows(tmp_path / "result.sqlite")
    assert 1 <= saved < total
    time.sleep(1)
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []  # no orphans

    result, log = finish(launch(tmp_path, 3, inp), tmp_path)
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (saved, total - saved)
    assert f"{total} calculations ({total - saved} computed, {saved} from checkpoint)" in log
    assert checkpoint_rows(tmp_path / "result.sqlite") == total
    assert result.return_result == pytest.approx(WATER8_MBE3_SERIAL, abs=1e-9)


@needs_xtb
@pytest.mark.slow
def test_killed_rank_under_ulfm_leaves_the_run_to_the_others(tmp_path):
    if (open_mpi_major() or 0) < 5:
        pytest.skip("surviving a dead rank needs Open MPI >= 5 (mpiexec --with-ft ulfm); this MPI ends the job")
    proc = launch(tmp_path, 3, xtb_input(8, 3), launch_flags=("--with-ft", "ulfm"))
    kill_rank_after_first_result(proc, tmp_path / "result.sqlite", "2")
    result, log = finish(proc, tmp_path)
    assert "mpi-rank-0 ERROR qcmb_fractal.execute.backends.mpi: mpi-rank-2 died" in log
    stats = result.extras["qcmb_fractal"]
    assert (stats["computed"], stats["reused"]) == (92, 0)
    assert result.return_result == pytest.approx(WATER8_MBE3_SERIAL, abs=1e-9)


def test_compute_child_environment_drops_the_launchers_variables():
    from qcmb_fractal.execute.backends.mpi import launcher_free_environment

    env = {
        "PATH": "/usr/bin",
        "PMI_RANK": "2",
        "HYDI_CONTROL_FD": "5",
        "OMPI_COMM_WORLD_RANK": "2",
        "PMIX_NAMESPACE": "prterun-vm-1@1",
        "OPAL_PREFIX": "/venv/lib/python3.11/site-packages/openmpi",
        "LD_LIBRARY_PATH": "/venv/lib/python3.11/site-packages/openmpi/lib:/opt/lib",
        "OMP_NUM_THREADS": "1",
    }
    assert launcher_free_environment(env) == {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib", "OMP_NUM_THREADS": "1"}


# ---- rank 0's scheduling, against a fake communicator (no mpiexec) ---------------------------------------------


class FakeMPIError(Exception):
    """Stands in for mpi4py's MPI.Exception; ``code`` is the MPI error class."""

    def __init__(self, code: int) -> None:
        super().__init__(f"fake MPI error {code}")
        self.code = code

    def Get_error_class(self) -> int:
        return self.code


class FakeStatus:
    source = tag = -1

    def Get_source(self) -> int:
        return self.source

    def Get_tag(self) -> int:
        return self.tag


class FakeComm:
    """Records what rank 0 sends and hands out planted messages (source, tag, payload) in order."""

    def __init__(self, inbox=(), failed=()) -> None:
        self.sent: list = []
        self.inbox = list(inbox)
        self.failed = list(failed)
        self.acked = False

    def isend(self, payload, dest, tag):
        from qcmb_fractal.execute.backends.mpi import TAG_BYE, TAG_STOP

        self.sent.append((dest, tag, payload))
        if tag == TAG_STOP:  # as a worker rank does
            self.inbox.append((dest, TAG_BYE, None))
        return SimpleNamespace(Test=lambda: True)

    def improbe(self, source, tag, status):
        if not self.inbox:
            return None
        status.source, status.tag, payload = self.inbox.pop(0)
        if isinstance(payload, FakeMPIError):
            raise payload
        return SimpleNamespace(recv=lambda: payload)

    def Get_failed(self):
        return SimpleNamespace(ranks=self.failed, Get_size=lambda: len(self.failed), Free=lambda: None)

    def Get_group(self):
        return SimpleNamespace(Free=lambda: None)

    def Ack_failed(self):
        self.acked = True

    def send(self, payload, dest, tag):
        self.sent.append((dest, tag, payload))


FAKE_MPI = SimpleNamespace(
    Exception=FakeMPIError,
    ERR_PROC_FAILED=75,
    ANY_SOURCE=-1,
    ANY_TAG=-1,
    Status=FakeStatus,
    Group=SimpleNamespace(Translate_ranks=lambda group, ranks, world: group.ranks),
    Request=SimpleNamespace(Waitall=lambda requests: None),
)


def fake_hub(comm: FakeComm, ranks=(1, 2)):
    from qcmb_fractal.execute.backends.mpi import ReadyMessage, _Hub

    return _Hub(comm, FAKE_MPI, [ReadyMessage(rank=r, name=f"mpi-rank-{r}", host="h") for r in ranks])


def queue(hub, tasks):
    from concurrent.futures import Future

    futures = [Future() for _ in tasks]
    hub.queue.extend(zip(tasks, futures, strict=True))
    return futures


def test_window_follows_each_ranks_pace():
    from qcmb_fractal.execute.backends.mpi import MAX_WINDOW, ReadyMessage, _Peer

    peer = _Peer(ReadyMessage(rank=1, name="mpi-rank-1", host="h"))
    assert peer.window == 2
    for mean, window in ((1.0, 2), (0.01, 26), (1e-6, MAX_WINDOW)):
        peer.mean_task_seconds = mean
        assert peer.window == window


def test_dispatch_shares_the_queue_and_keeps_a_failed_task_off_its_rank():
    from qcmb_fractal.execute.backends.mpi import TAG_TASKS, TaskOutcome

    tasks = Plan(xtb_input(3, 2)).tasks[:4]
    comm = FakeComm()
    hub = fake_hub(comm)
    hub.failed_on[tasks[0].hash] = {1}
    futures = queue(hub, tasks)
    assert hub.dispatch() and hub.busy()
    sent = {dest: [t.hash for t in batch] for dest, tag, batch in comm.sent if tag == TAG_TASKS}
    assert tasks[0].hash in sent[2] and tasks[0].hash not in sent[1]
    assert sorted(h for batch in sent.values() for h in batch) == sorted(t.hash for t in tasks)

    outcome = TaskOutcome(hash=tasks[0].hash, success=False, error="scf", worker="mpi-rank-2", wall_time=0.5)
    hub._results(hub.peers[2], [outcome, outcome])  # a duplicate is ignored
    assert futures[0].result(timeout=0) == outcome
    assert hub.failed_on[tasks[0].hash] == {1, 2} and hub.peers[2].mean_task_seconds == 0.5


def test_a_rank_that_stops_fails_its_tasks_once_and_then_the_queue_fails():
    from qcmb_fractal.execute.backends.mpi import TAG_FATAL

    tasks = Plan(xtb_input(3, 2)).tasks[:3]
    comm = FakeComm(inbox=[(1, TAG_FATAL, "MemoryError: out of memory"), (9, TAG_FATAL, "not a peer")])
    hub = fake_hub(comm, ranks=(1,))
    futures = queue(hub, tasks)
    hub.dispatch()
    assert hub.receive()
    lost = futures[0].result(timeout=0)
    assert (lost.success, lost.error) == (False, "mpi-rank-1 stopped: MemoryError: out of memory")
    assert hub.failed_on[tasks[0].hash] == {1}
    assert not hub.dispatch()
    with pytest.raises(RuntimeError, match="every MPI worker rank has stopped"):
        futures[2].result(timeout=0)


def test_a_dead_rank_found_by_a_probe_is_taken_out_under_ulfm():
    from qcmb_fractal.execute.backends.mpi import is_process_failure

    assert is_process_failure(FAKE_MPI, FakeMPIError(75)) and not is_process_failure(FAKE_MPI, FakeMPIError(1))
    assert not is_process_failure(FAKE_MPI, RuntimeError("not MPI"))
    tasks = Plan(xtb_input(3, 2)).tasks[:2]
    comm = FakeComm(inbox=[(-1, -1, FakeMPIError(75))], failed=[2])
    hub = fake_hub(comm)
    futures = queue(hub, tasks)
    hub.dispatch()
    assert not hub.receive()
    assert comm.acked and hub.peers[2].dead and not hub.peers[2].alive
    assert futures[1].result(timeout=0).error == "mpi-rank-2 died"
    comm.inbox = [(-1, -1, FakeMPIError(1))]
    with pytest.raises(FakeMPIError):
        hub.receive()


def test_release_stops_live_ranks_and_waits_for_their_goodbye():
    from qcmb_fractal.execute.backends.mpi import TAG_RESULTS, TAG_STOP

    comm = FakeComm(inbox=[(1, TAG_RESULTS, [])])  # a late result before the goodbyes is dropped
    hub = fake_hub(comm, ranks=(1, 2, 3))
    hub.peers[2].dead = True
    hub.results = 1
    hub.release_workers()
    assert [(dest, tag) for dest, tag, _ in comm.sent] == [(1, TAG_STOP), (3, TAG_STOP)]
    assert not comm.inbox and not hub.sends


def fake_worker_rank(comm: FakeComm):
    from qcmb_fractal.execute.backends.mpi import _WorkerRank

    return _WorkerRank(SimpleNamespace(comm=comm, MPI=FAKE_MPI, rank=1, node_ranks=[0, 1]))


def test_a_worker_rank_told_to_stop_before_start_says_goodbye():
    from qcmb_fractal.execute.backends.mpi import TAG_BYE, TAG_STOP

    comm = FakeComm(inbox=[(0, TAG_STOP, None)])
    assert fake_worker_rank(comm).run() == 0
    assert comm.sent == [(0, TAG_BYE, None)]


def test_a_worker_rank_that_cannot_start_reports_why_and_waits_for_stop():
    from qcmb_fractal.execute.backends.mpi import TAG_BYE, TAG_READY, TAG_START, TAG_STOP, TAG_TASKS, StartMessage

    start = StartMessage(input_json=xtb_input(2, 2).model_dump_json(), cores_per_task=100_000)
    comm = FakeComm(inbox=[(0, TAG_START, start), (0, TAG_TASKS, []), (0, TAG_STOP, None)])
    assert fake_worker_rank(comm).run() == 0
    (dest, tag, ready), bye = comm.sent
    assert (dest, tag, ready.rank, ready.name) == (0, TAG_READY, 1, "mpi-rank-1")
    assert "--cores-per-task must be between 1 and" in ready.error
    assert bye == (0, TAG_BYE, None) and not comm.inbox


def test_a_worker_rank_stops_when_rank_0_dies_under_ulfm(caplog):
    comm = FakeComm(inbox=[(0, -1, FakeMPIError(75))])
    assert fake_worker_rank(comm).run() == 1
    assert "mpi-rank-1: rank 0 died" in caplog.text
    comm.inbox = [(0, -1, FakeMPIError(1))]
    with pytest.raises(FakeMPIError):
        fake_worker_rank(comm).run()


def test_a_crashed_calculation_is_a_failed_outcome_returned_with_the_batch():
    from concurrent.futures import Future

    from pebble import ProcessExpired

    from qcmb_fractal.execute.backends.mpi import TAG_RESULTS

    task = Plan(xtb_input(2, 2)).tasks[0]
    comm = FakeComm()
    rank = fake_worker_rank(comm)
    crashed: Future = Future()
    crashed.set_exception(ProcessExpired("Abnormal termination", code=-9, pid=1234))
    rank._collect(task, crashed)
    rank._flush(force=False)
    assert comm.sent == [] and len(rank.outbox) == 1
    rank._flush(force=True)
    ((dest, tag, [outcome]),) = comm.sent
    assert (dest, tag, outcome.hash, outcome.success, outcome.worker) == (
        0,
        TAG_RESULTS,
        task.hash,
        False,
        "mpi-rank-1",
    )
    assert outcome.error == "worker process died (signal 9) while running this calculation"
    assert rank.outbox == [] and rank.sends == []


def test_cancelled_tasks_are_not_sent_and_shutdown_fails_what_is_left():
    from qcmb_fractal.execute.backends.mpi import TAG_TASKS

    tasks = Plan(xtb_input(3, 2)).tasks[:3]
    comm = FakeComm()
    hub = fake_hub(comm, ranks=(1,))
    futures = queue(hub, tasks)
    futures[0].cancel()
    hub.dispatch()
    ((dest, tag, batch),) = comm.sent
    assert (dest, tag, [t.hash for t in batch]) == (1, TAG_TASKS, [t.hash for t in tasks[1:]])
    hub.fail_all("shut down")
    for fut in futures[1:]:
        with pytest.raises(RuntimeError, match="shut down"):
            fut.result(timeout=0)
    assert not hub.busy()


def test_a_send_to_a_dead_rank_takes_it_out_and_other_send_errors_propagate():
    tasks = Plan(xtb_input(3, 2)).tasks[:2]
    comm = FakeComm(failed=[1])
    hub = fake_hub(comm, ranks=(1,))
    futures = queue(hub, tasks)

    def fault_isend(payload, dest, tag):
        raise FakeMPIError(75)

    comm.isend = fault_isend
    hub.dispatch()
    assert hub.peers[1].dead and futures[0].result(timeout=0).error == "mpi-rank-1 died"

    def fault_test_dead():
        raise FakeMPIError(75)

    hub.sends = [SimpleNamespace(Test=fault_test_dead), SimpleNamespace(Test=lambda: False)]
    hub._reap()  # the dead rank's send is dropped, the pending one kept
    assert len(hub.sends) == 1 and hub.peers[1].dead

    def fault_test():
        raise FakeMPIError(1)

    hub.sends = [SimpleNamespace(Test=fault_test)]
    with pytest.raises(FakeMPIError):
        hub._reap()

    def fault_isend_other(payload, dest, tag):
        raise FakeMPIError(1)

    comm.isend = fault_isend_other
    with pytest.raises(FakeMPIError):
        hub._send([], 1, 0)


def test_open_mpis_library_path_goes_entirely_when_nothing_else_is_on_it():
    from qcmb_fractal.execute.backends.mpi import launcher_free_environment

    env = {"OPAL_PREFIX": "/opt/openmpi", "LD_LIBRARY_PATH": "/opt/openmpi/lib", "HOME": "/root"}
    assert launcher_free_environment(env) == {"HOME": "/root"}


class FakeWorld(FakeComm):
    """COMM_WORLD of ``size`` ranks as seen from ``rank``; ``ready`` is what the worker ranks answer to start."""

    def __init__(self, rank: int, size: int, ready=()) -> None:
        super().__init__()
        self.rank, self.size, self.ready = rank, size, list(ready)

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        return SimpleNamespace(allgather=lambda rank: list(range(self.size)), Free=lambda: None)

    def recv(self, source, tag):
        return self.ready.pop(0)


def fake_mpi_backend(monkeypatch, world: FakeWorld, thread_level: int = 3):
    from qcmb_fractal.execute.backends import mpi

    fake = SimpleNamespace(
        **vars(FAKE_MPI), COMM_WORLD=world, COMM_TYPE_SHARED=0, THREAD_SERIALIZED=2, Query_thread=lambda: thread_level
    )
    monkeypatch.setattr(mpi, "_mpi", lambda: fake)
    monkeypatch.setattr(mpi.atexit, "register", lambda *args, **kwargs: None)
    monkeypatch.setattr(mpi.multiprocessing.current_process(), "name", "MainProcess")
    return mpi.MPIBackend()


def test_backend_refuses_a_library_without_serialized_threads_and_misplaced_calls(monkeypatch):
    with pytest.raises(InputError, match="below MPI_THREAD_SERIALIZED"):
        fake_mpi_backend(monkeypatch, FakeWorld(0, 2), thread_level=1)
    worker = fake_mpi_backend(monkeypatch, FakeWorld(1, 3))
    assert not worker.is_driver and worker.node_ranks == [0, 1, 2] and worker.workers == 2
    with pytest.raises(RuntimeError, match="rank 0 only"):
        worker.start(Plan(xtb_input(2, 2)))
    worker.shutdown()  # nothing to release from a worker rank
    assert worker.comm.sent == []
    driver = fake_mpi_backend(monkeypatch, FakeWorld(0, 2))
    with pytest.raises(RuntimeError, match="rank 0 drives"):
        driver.serve()
    with pytest.raises(RuntimeError, match="before submit"):
        driver.submit(Plan(xtb_input(2, 2)).tasks[0])


def test_worker_ranks_that_cannot_start_are_one_input_error_and_all_are_released(monkeypatch):
    from qcmb_fractal.execute.backends.mpi import TAG_START, TAG_STOP, ReadyMessage

    ready = [
        ReadyMessage(rank=1, name="mpi-rank-1", host="n1", error="--memory 9e9 GiB per task is not possible here"),
        ReadyMessage(rank=2, name="mpi-rank-2", host="n1", ncores=1, memory=1.0),
    ]
    world = FakeWorld(0, 3, ready)
    backend = fake_mpi_backend(monkeypatch, world)
    with pytest.raises(InputError, match="rank 1 on n1: --memory 9e9 GiB per task is not possible here"):
        backend.start(Plan(xtb_input(2, 2)))
    assert [(dest, tag) for dest, tag, _ in world.sent] == [
        (1, TAG_START),
        (2, TAG_START),
        (1, TAG_STOP),
        (2, TAG_STOP),
    ]
    assert not world.inbox


def sent_tasks(world: FakeWorld, count: int) -> None:
    """Wait (up to a minute) until the communication thread has sent ``count`` task messages."""
    from qcmb_fractal.execute.backends.mpi import TAG_TASKS

    for _ in range(60_000):
        if sum(tag == TAG_TASKS for _, tag, _ in list(world.sent)) >= count:
            return
        time.sleep(0.001)
    raise AssertionError(f"the communication thread sent fewer than {count} task messages")


def test_the_communication_thread_returns_results_and_a_failure_in_it_fails_every_future(monkeypatch):
    from qcmb_fractal.execute.backends.mpi import TAG_RESULTS, ReadyMessage, TaskOutcome

    tasks = Plan(xtb_input(3, 2)).tasks[:2]
    world = FakeWorld(0, 2, [ReadyMessage(rank=1, name="mpi-rank-1", host="n1", ncores=1, memory=1.0)])
    backend = fake_mpi_backend(monkeypatch, world)
    backend.start(Plan(xtb_input(3, 2)))
    with pytest.raises(RuntimeError, match="already called"):
        backend.start(Plan(xtb_input(3, 2)))
    first = backend.submit(tasks[0])
    sent_tasks(world, 1)
    done = TaskOutcome(hash=tasks[0].hash, success=True, worker="mpi-rank-1", wall_time=0.1)
    world.inbox.append((1, TAG_RESULTS, [done]))
    assert first.result(timeout=60) == done

    second = backend.submit(tasks[1])
    sent_tasks(world, 2)
    world.inbox.append((1, TAG_RESULTS, FakeMPIError(1)))  # the library itself fails
    with pytest.raises(RuntimeError, match="MPI communication failed: fake MPI error 1"):
        second.result(timeout=60)
    backend._thread.join(timeout=60)
    with pytest.raises(RuntimeError, match="communication thread failed"):
        backend.submit(tasks[1])
    backend.shutdown()


def test_without_mpi4py_the_backend_says_how_to_install_it(monkeypatch):
    from qcmb_fractal.execute.backends.mpi import _mpi

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(InputError, match=re.escape("pip install 'qcmb-fractal[mpi]'")):
        _mpi()


def test_a_rank_that_never_says_goodbye_aborts_the_job(monkeypatch, caplog):
    from qcmb_fractal.execute.backends import mpi

    class FaultSilentComm(FakeComm):
        def isend(self, payload, dest, tag):  # the stop is sent, no goodbye ever comes
            self.sent.append((dest, tag, payload))
            return SimpleNamespace(Test=lambda: True)

        def Abort(self, code):
            raise SystemExit(code)

    monkeypatch.setattr(mpi, "RELEASE_TIMEOUT_SECONDS", 0)
    with pytest.raises(SystemExit) as stopped:
        fake_hub(FaultSilentComm(), ranks=(1,)).release_workers()
    assert stopped.value.code == 1
    assert "MPI ranks [1] did not stop within 0 s; aborting the job" in caplog.text


def test_a_worker_rank_whose_loop_fails_reports_it_and_waits_for_stop():
    from qcmb_fractal.execute.backends.mpi import TAG_BYE, TAG_FATAL, TAG_READY, TAG_START, TAG_STOP, ReadyMessage

    comm = FakeComm(inbox=[(0, TAG_START, None), (0, TAG_STOP, None)])
    rank = fake_worker_rank(comm)
    rank._setup = lambda start: ReadyMessage(rank=1, name="mpi-rank-1", host="n1", ncores=1, memory=1.0)

    def fault_loop(status):
        raise OSError("No space left on device")

    rank._loop = fault_loop
    assert rank.run() == 0
    assert [(tag, payload) for _, tag, payload in comm.sent[1:]] == [
        (TAG_FATAL, "OSError: No space left on device"),
        (TAG_BYE, None),
    ]
    assert comm.sent[0][1] == TAG_READY and not comm.inbox
