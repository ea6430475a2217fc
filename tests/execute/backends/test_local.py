"""The local pool's own duties: options, per-task timeout, scratch clean-up, stale scratch sweep.

Equality with QCManyBody lives in test_local_reference.py; the SIGKILL-resume test in the CLI tests.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qcmb_fractal.errors import RunFailed
from qcmb_fractal.execute import Runner, add_backend_arguments
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.pool import MAX_POOL_RESTARTS, SCRATCH_PREFIX, sweep_stale_scratch
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.compute_faults import fault_hang
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, mbe_input


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args(["--workers", "1", "--memory", "0.5", "--cores-per-task", "1", "--timeout", "9"])
    backend = LocalBackend.from_arguments(args)
    assert (backend.workers, backend.resources.ncores, backend.resources.memory) == (1, 1, 0.5)
    assert backend.timeout == 9.0 and backend.capacity == 2


def test_submit_needs_start() -> None:
    plan = Plan(mbe_input(water_cluster(2), {"x": XTB_GFN2}, {2: "x"}, bsse=["nocp"]))
    with pytest.raises(RuntimeError, match=r"start\(\) must run before submit"):
        LocalBackend(1).submit(plan.tasks[0])


def test_stale_scratch_of_dead_runs_is_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f"{SCRATCH_PREFIX}{int(dead.stdout)}-{host}-abc"
    alive = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-{host}-def"
    odd = tmp_path / f"{SCRATCH_PREFIX}notapid"
    other_node = tmp_path / f"{SCRATCH_PREFIX}{int(dead.stdout)}-not-{host}-ghi"  # shared scratch, live elsewhere
    for d in (stale, alive, odd, other_node):
        (d / "job").mkdir(parents=True)
    sweep_stale_scratch(tmp_path)
    assert not stale.exists() and alive.exists() and odd.exists() and other_node.exists()


@needs_xtb
def test_scratch_lives_under_the_given_directory_and_is_removed(tmp_path: Path) -> None:
    plan = Plan(mbe_input(water_cluster(3), {"x": XTB_GFN2}, {2: "x"}, bsse=["nocp"]))
    backend = LocalBackend(1, scratch=tmp_path / "scratch")
    with backend:
        result = Runner(plan, backend, progress=False).run()
        assert backend.scratch_dir is not None and backend.scratch_dir.parent == tmp_path / "scratch"
        assert backend.scratch_dir.name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
    assert list((tmp_path / "scratch").iterdir()) == []
    assert result.extras["qcmb_fractal"]["workers"] == 1
    assert 0 < result.extras["qcmb_fractal"]["utilization"] <= 1


@pytest.mark.nwchem
@needs_nwchem
def test_timeout_kills_the_calculation_and_counts_as_a_failed_attempt(tmp_path: Path) -> None:
    plan = Plan(mbe_input(water_cluster(2), {"hf": NWCHEM_HF}, {1: "hf"}, bsse=["nocp"]))
    with pytest.raises(RunFailed) as err, LocalBackend(1, timeout=0.05, scratch=tmp_path) as backend:
        Runner(plan, backend, max_attempts=1, progress=False).run()
    assert set(err.value.failures) == {t.label for t in plan.tasks}
    assert all("exceeded the per-task timeout" in e for e in err.value.failures.values())
    assert list(tmp_path.iterdir()) == []


def _kill_idle_worker(backend: LocalBackend) -> None:
    """SIGKILL the (only) worker while it runs nothing, as the OOM killer or a stray ``kill`` would."""
    assert backend.pool is not None
    pid = backend.pool.pool.schedule(fault_hang, args=(0,)).result(timeout=60)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while backend.pool.pool.active and time.monotonic() < deadline:  # pebble notices within 0.1 s
        time.sleep(0.05)
    assert not backend.pool.pool.active, "pebble's pool survived a worker that died idle: test premise gone"


@needs_xtb
def test_workers_that_die_between_calculations_are_replaced_a_bounded_number_of_times(tmp_path: Path) -> None:
    plan = Plan(mbe_input(water_cluster(2), {"x": XTB_GFN2}, {2: "x"}, bsse=["nocp"]))
    with LocalBackend(1, scratch=tmp_path) as backend:
        backend.start(plan)
        _kill_idle_worker(backend)
        outcome = backend.submit(plan.tasks[0]).result(timeout=120)
        assert outcome.success and outcome.properties is not None
        assert backend.pool is not None and backend.pool.restarts == 1

        backend.pool.restarts = MAX_POOL_RESTARTS
        _kill_idle_worker(backend)
        with pytest.raises(RunFailed, match="died 4 times without a calculation to blame"):
            backend.submit(plan.tasks[1])
