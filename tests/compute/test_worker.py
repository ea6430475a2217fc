"""The warm worker runs QCFractal's own run script in-process and returns what QCFractal's subprocess returns;
its pool survives a worker that dies and gives tasks back unstarted when asked."""

import json
import os
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import psutil
import pytest
from qcfractalcompute.apps.qcengine import qcengine_conda_app
from qcfractalcompute.config import LocalExecutorConfig
from qcportal.compression import CompressionEnum, compress

from qcmb_fractal.compute.worker import CRASH_RETRIES, WarmPool, run_qcengine
from qcmb_fractal.testing.compute_faults import fault_exit_worker, fault_hang
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb


def executor(scratch: Path) -> LocalExecutorConfig:
    return LocalExecutorConfig(
        cores_per_worker=1, memory_per_worker=1, max_workers=1, compute_tags=["*"], scratch_directory=str(scratch)
    )


def singlepoint_kwargs() -> bytes:
    """The function_kwargs QCFractal's singlepoint socket builds for an xtb energy of a water dimer."""
    molecule = json.loads(water_cluster(2).convert_v(1).json())
    qcschema_input = {
        "schema_name": "qcschema_input",
        "schema_version": 1,
        "id": "1",
        "driver": "energy",
        "model": {"method": "gfn2-xtb", "basis": None},
        "molecule": molecule,
        "keywords": {},
        "protocols": {},
        "extras": {},
    }
    return compress({"input_data": qcschema_input, "program": "xtb"}, CompressionEnum.zstd)[0]


@needs_xtb
def test_in_process_result_is_what_qcfractals_subprocess_returns(tmp_path):
    config = executor(tmp_path)
    kwargs = singlepoint_kwargs()
    ours = run_qcengine(kwargs, config)
    theirs = qcengine_conda_app(1, kwargs, config, conda_env_name=None)
    assert ours.success and theirs.success
    a, b = ours.result, theirs.result
    assert a.keys() == b.keys()
    assert a["schema_name"] == b["schema_name"] and a["properties"].keys() == b["properties"].keys()
    assert a["return_result"] == pytest.approx(b["return_result"], abs=1e-10)
    assert a["provenance"].keys() == b["provenance"].keys() and a["provenance"]["creator"] == "xtb"
    assert a["native_files"] == b["native_files"] and (a["stdout"] is None) == (b["stdout"] is None)
    assert list(tmp_path.iterdir()) == []  # scratch cleaned up as QCEngine does for the subprocess


def test_a_worker_that_dies_fails_only_its_task_and_the_pool_recovers(tmp_path):
    done = threading.Event()
    pool = WarmPool(executor(tmp_path), 1, "test-manager", done.set)
    try:
        crashed = pool.submit(fault_exit_worker, 7).result(timeout=120)
        assert not crashed.success
        error = crashed.result["error"]
        assert error["error_type"] == "WorkerCrash"
        assert f"{CRASH_RETRIES + 1} time(s)" in error["error_message"]
        assert "the program crashed, was killed or ran out of memory" in error["error_message"]
        assert done.is_set()
        assert pool.submit(os.getpid).result(timeout=120) != os.getpid()  # a fresh worker took over
    finally:
        pool.shutdown()


def _workers() -> set[int]:
    return {p.pid for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())}


def test_unstarted_tasks_are_cancelled_and_shutdown_ends_the_workers(tmp_path):
    before = _workers()
    pool = WarmPool(executor(tmp_path), 1, "test-manager", lambda: None)
    running = pool.submit(fault_hang, 300)
    queued = [pool.submit(fault_hang, 300) for _ in range(3)]
    deadline = time.monotonic() + 60
    while not _workers() - before:
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.1)
    worker_pids = _workers() - before
    cancelled = pool.cancel_unstarted([running, *queued])
    # ProcessPoolExecutor hands one task beyond its workers to its call queue early; that one cannot be cancelled
    assert running not in cancelled and len(cancelled) >= len(queued) - 1
    assert all(f.cancelled() for f in cancelled)
    pool.shutdown()
    assert not [pid for pid in worker_pids if psutil.pid_exists(pid)]
    wait([running], timeout=60)
    assert running.cancelled()  # never a failed result for a task the server hands to another manager
