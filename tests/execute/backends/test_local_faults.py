"""Faults injected under the local backend: the run ends with QCManyBody's numbers or a clear stop.

The QC program is real NWChem behind a ``fault_nwchem`` shim on PATH (a shell script named ``nwchem``
in a ``fault-*`` directory) that injects one fault on its first calculation and then runs the real
program. Every test checks that nothing is left running (processes carry a tag in their environment)
and that no scratch directory is left behind.
"""

import os
import subprocess
from pathlib import Path

import pytest
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.execute import Checkpoint, Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import Plan, plain_input
from qcmb_fractal.testing.local_faults import (
    GHOST_CALL,
    WATER_DIMER,
    assert_nothing_left,
    assert_same_numbers,
    dimer_plan,
    install_fault_nwchem,
    run,
)
from qcmb_fractal.testing.programs import needs_nwchem

pytestmark = [pytest.mark.nwchem, needs_nwchem]


@pytest.fixture(scope="module")
def reference():
    """QCManyBody's serial computer on the real NWChem: the numbers every faulted run must reproduce."""
    return ManyBodyComputer.from_manybodyinput(dimer_plan().input)


def test_worker_sigkilled_mid_task_is_retried_elsewhere(tmp_path, monkeypatch, reference):
    shim = install_fault_nwchem(tmp_path, monkeypatch, "kill -KILL $PPID; exit 137")  # $PPID: the pool worker
    plan = dimer_plan()
    result = run(plan, tmp_path)
    assert_same_numbers(result, reference)
    stats = result.extras["qcmb_fractal"]
    assert stats["failed_attempts"] == 1
    assert shim.n_calls == len(plan.tasks) + 1  # only the killed calculation ran twice
    assert_nothing_left(shim, tmp_path / "scratch")


def test_program_crash_is_retried(tmp_path, monkeypatch, reference):
    shim = install_fault_nwchem(tmp_path, monkeypatch, 'echo "fault_nwchem: injected crash" >&2; exit 3')
    plan = dimer_plan()
    result = run(plan, tmp_path)
    assert_same_numbers(result, reference)
    assert result.extras["qcmb_fractal"]["failed_attempts"] == 1
    assert shim.n_calls == len(plan.tasks) + 1
    assert_nothing_left(shim, tmp_path / "scratch")


def test_program_hang_is_killed_at_timeout_with_its_children(tmp_path, monkeypatch, reference):
    shim = install_fault_nwchem(tmp_path, monkeypatch, "exec sleep 600")
    plan = dimer_plan()
    result = run(plan, tmp_path, timeout=10)
    assert_same_numbers(result, reference)
    assert result.extras["qcmb_fractal"]["failed_attempts"] == 1
    assert shim.n_calls == len(plan.tasks) + 1
    assert_nothing_left(shim, tmp_path / "scratch")  # the 'sleep 600' went down with its worker


def test_program_always_crashing_stops_with_table_then_resumes(tmp_path, monkeypatch, reference):
    shim = install_fault_nwchem(
        tmp_path, monkeypatch, 'echo "fault_nwchem: no ghost atoms today" >&2; exit 3', condition=GHOST_CALL
    )
    plan = dimer_plan()
    ghost_tasks = [t for t in plan.tasks if t.basis != t.real]
    with pytest.raises(RunFailed) as err:
        run(plan, tmp_path)
    assert len(err.value.failures) == len(ghost_tasks) > 0
    assert "fix the cause and rerun" in str(err.value)
    assert str(err.value).count("fault_nwchem: no ghost atoms today") == len(ghost_tasks)  # the program's own words
    assert_nothing_left(shim, tmp_path / "scratch")
    saved = len(Checkpoint(tmp_path / "run.sqlite"))
    assert saved == len(plan.tasks) - len(ghost_tasks)

    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])  # the "fix": the real NWChem
    result = run(dimer_plan(), tmp_path)
    assert_same_numbers(result, reference)
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (saved, len(ghost_tasks))


def test_unknown_method_fails_at_run_time_with_a_clear_table(tmp_path, monkeypatch):
    mol = {**WATER_DIMER, "geometry": [x / 0.52917721067 for x in WATER_DIMER["geometry"]]}
    plan = Plan(plain_input(mol, program="xtb", method="gfn9-xtb"))
    with pytest.raises(RunFailed) as err:
        run(plan, tmp_path)
    message = str(err.value)
    assert f"{len(plan.tasks)} fragment calculation(s) failed" in message
    assert message.count("Invalid method gfn9-xtb") == len(plan.tasks)
    assert "input_error" in message


def fill_disk(path: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M"], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of a few MiB as scratch; skipped where the sandbox forbids mounting."""
    mounts = []

    def make(size: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_scratch_too_small_is_refused_before_anything_runs(small_tmpfs, tmp_path):
    scratch = small_tmpfs("1m")
    with LocalBackend(1, scratch=scratch) as backend, pytest.raises(InputError, match="MiB free"):
        Runner(dimer_plan(), backend, checkpoint=None, progress=False).run()
    assert list(scratch.iterdir()) == []


def test_scratch_filling_up_mid_run_stops_at_the_next_level_and_resumes(small_tmpfs, tmp_path, monkeypatch, reference):
    scratch = small_tmpfs("200m")  # room for level 1 (64 MiB) and level 2 (128 MiB) with one worker
    filler = scratch / "fault-filler"
    shim = install_fault_nwchem(
        tmp_path,
        monkeypatch,
        f'dd if=/dev/zero of="{filler}" bs=1M 2>/dev/null',
        condition='[ "$(wc -l < "$STATE/../calls.txt")" -eq 2 ]',  # the second calculation fills the disk
    )
    plan = dimer_plan()
    checkpoint = Checkpoint(tmp_path / "run.sqlite")
    with LocalBackend(1, scratch=scratch) as backend, pytest.raises(InputError, match="MiB free"):
        Runner(plan, backend, checkpoint=checkpoint, mode="levels", progress=False).run()
    assert_nothing_left(shim, scratch)
    saved = len(checkpoint)
    checkpoint.close()
    assert 0 < saved < len(plan.tasks)

    filler.unlink()  # the user frees space and runs again
    with LocalBackend(1, scratch=scratch) as backend:
        result = Runner(plan, backend, checkpoint=Checkpoint(tmp_path / "run.sqlite"), progress=False).run()
    assert_same_numbers(result, reference)
    assert result.extras["qcmb_fractal"]["reused"] == saved
    assert_nothing_left(shim, scratch)
