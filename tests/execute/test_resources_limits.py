"""Resources: workers fit free memory, absurd requests are refused, and per-worker limits hold.

The limits are exercised on real workers: NWChem and xtb must still give QCManyBody's numbers under the
tightest limit the backend sets, and a runaway program (a ``fault_nwchem`` hog) must fail alone.
"""

import logging
import math
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pytest
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.resources import (
    ADDRESS_SLACK_GIB,
    MIN_TASK_MEMORY_GIB,
    WORKER_OVERHEAD_GIB,
    GiB,
    select_resources,
)
from qcmb_fractal.plan import Plan, plain_input
from qcmb_fractal.testing.local_faults import (
    WATER_DIMER,
    assert_nothing_left,
    dimer_plan,
    install_fault_nwchem,
)
from qcmb_fractal.testing.programs import needs_nwchem


def test_workers_shrink_to_free_memory_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        res = select_resources(64, total_cores=2, available_gib=4.0)
    fit = int(4.0 * 0.9 // (MIN_TASK_MEMORY_GIB + WORKER_OVERHEAD_GIB))
    assert res.workers == fit == 3
    assert res.warnings == [caplog.records[-1].getMessage()]
    assert "using 3 workers" in res.warnings[0]


def test_default_workers_fit_cores_and_memory():
    assert select_resources(total_cores=8, available_gib=100.0).workers == 8
    assert select_resources(total_cores=8, available_gib=2.0).workers == 1  # 1.8 GiB usable: one worker
    assert select_resources(total_cores=8, available_gib=2.0).warnings == []  # nothing asked, nothing to warn


def test_local_backend_adapts_to_what_psutil_reports(monkeypatch, caplog):
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=3 * GiB))
    with caplog.at_level(logging.WARNING):
        backend = LocalBackend(16)
    assert backend.workers == 2
    assert "do not fit" in caplog.text


@pytest.mark.parametrize(
    ("workers", "memory", "ncores", "message"),
    [
        (0, None, None, "--workers must be between 1"),
        (-3, None, None, "--workers must be between 1"),
        (10**9, None, None, "--workers must be between 1"),
        (None, 0.0, None, "--memory"),
        (None, -1.0, None, "--memory"),
        (None, math.nan, None, "--memory"),
        (None, math.inf, None, "--memory"),
        (None, 1e9, None, "--memory"),
        (None, None, 0, "--cores-per-task"),
        (None, None, 10**6, "--cores-per-task"),
    ],
)
def test_absurd_resources_are_refused(workers, memory, ncores, message):
    with pytest.raises(InputError, match=message):
        select_resources(workers, memory, ncores, total_cores=2, available_gib=20.0)


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf])
def test_absurd_timeout_is_refused(timeout):
    with pytest.raises(InputError, match="--timeout"):
        LocalBackend(1, timeout=timeout)


def test_worker_limits_are_set_and_bite():
    """In a fresh process: the address-space cap holds, and a 4 GiB allocation fails instead of succeeding."""
    code = (
        "import resource\n"
        "from qcmb_fractal.execute.resources import apply_worker_limits\n"
        "limits = apply_worker_limits(0.5)\n"
        "assert resource.getrlimit(resource.RLIMIT_AS)[0] == limits['RLIMIT_AS']\n"
        "assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 0\n"
        "try:\n"
        "    bytes(4 << 30)\n"
        "except MemoryError:\n"
        "    print('refused', limits['RLIMIT_AS'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    expected = int((0.5 + WORKER_OVERHEAD_GIB + ADDRESS_SLACK_GIB) * GiB)
    assert out.split() == ["refused", str(expected)]


@pytest.mark.nwchem
@needs_nwchem
def test_nwchem_and_xtb_run_under_the_tightest_limits(tmp_path):
    """memory=0.5 GiB per task is the smallest default; both programs must be unaffected by its 2 GiB cap."""
    mol = {**WATER_DIMER, "geometry": [x / 0.52917721067 for x in WATER_DIMER["geometry"]]}
    for plan in (dimer_plan(), Plan(plain_input(mol, program="xtb", method="gfn2-xtb"))):
        with LocalBackend(2, memory=MIN_TASK_MEMORY_GIB, scratch=tmp_path) as backend:
            result = Runner(plan, backend, progress=False).run()
        reference = ManyBodyComputer.from_manybodyinput(plan.input)
        assert result.return_result == pytest.approx(reference.return_result, abs=1e-8)


@pytest.mark.nwchem
@needs_nwchem
def test_runaway_program_fails_alone_under_the_memory_cap(tmp_path, monkeypatch):
    hog = f"{sys.executable} -c 'bytes(4 << 30)' || {{ echo 'fault_nwchem: hog refused memory' >&2; exit 1; }}"
    shim = install_fault_nwchem(tmp_path, monkeypatch, hog, condition="true")
    backend = LocalBackend(1, memory=MIN_TASK_MEMORY_GIB, scratch=tmp_path / "scratch")
    with backend, pytest.raises(RunFailed) as err:
        Runner(dimer_plan(), backend, max_attempts=1, progress=False).run()
    assert "fault_nwchem: hog refused memory" in str(err.value)
    assert_nothing_left(shim, tmp_path / "scratch")
