"""The MPI backend under a real ``mpiexec`` with 3-4 ranks, against QCManyBody's serial computer."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import textwrap
import time
from functools import cache
from pathlib import Path

import numpy as np
import psutil
import pytest
from qcmanybody.models.v2 import ManyBodyResult
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.plan import load_input

pytest.importorskip("mpi4py", reason="the mpi extra is not installed: pip install 'qcmb-fractal[mpi]'")

WATERS = {
    3: """O 0.000 0.000 0.000\nH 0.757 0.586 0.000\nH -0.757 0.586 0.000
--\nO -0.178 -0.091 2.902\nH 0.579 0.495 2.902\nH -0.935 0.495 2.902
--\nO 0.012 3.368 -0.098\nH 0.769 3.954 -0.098\nH -0.745 3.954 -0.098""",
}

DRIVER = """
import json, logging, sys
from qcmb_fractal.execute import Checkpoint, Runner
from qcmb_fractal.execute.backends.mpi import MPIBackend
from qcmb_fractal.logs import LOG_FORMAT
from qcmb_fractal.plan import Plan, load_input
{fault}
if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    xyz, options, checkpoint, output = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    backend = MPIBackend()
    if not backend.is_driver:
        sys.exit(backend.serve())
    plan = Plan(load_input(xyz, **options))
    with backend:
        result = Runner(plan, backend, checkpoint=Checkpoint(checkpoint), progress=False).run()
    open(output, "w").write(result.model_dump_json())
"""

# Imported again as __mp_main__ in every rank's compute child: there, every calculation on rank 2 fails.
FAULT = """
import multiprocessing
import qcengine
_real_compute = qcengine.compute
def fault_compute(*args, **kwargs):
    if multiprocessing.current_process().name == "mpi-rank-2":
        raise RuntimeError("fault injected on rank 2")
    return _real_compute(*args, **kwargs)
qcengine.compute = fault_compute
"""

XTB = {"program": "xtb", "method": "gfn2-xtb"}


def water_cluster(n: int) -> str:
    """n waters on a jittered cubic grid 3.1 Å apart, fragments separated by ``--``."""
    rng = np.random.default_rng(7)
    side = int(np.ceil(n ** (1 / 3)))
    blocks = []
    for i, j, k in np.ndindex(side, side, side):
        if len(blocks) == n:
            break
        o = np.array([i, j, k]) * 3.1 + rng.normal(0, 0.2, 3)
        atoms = [("O", o), ("H", o + [0.757, 0.586, 0.0]), ("H", o + [-0.757, 0.586, 0.0])]
        blocks.append("\n".join(f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in atoms))
    return "\n--\n".join(blocks)


@cache
def mpiexec() -> tuple[str, ...]:
    """The launcher that belongs to the installed MPI (the wheel's, beside this Python), with what it needs here."""
    exe = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpi4py is installed but no mpiexec is on PATH; pip install 'qcmb-fractal[mpi]' brings one")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra: list[str] = []
    if "Open MPI" in version or "OpenRTE" in version:
        extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return (exe, *extra)


def launch(tmp_path: Path, ranks: int, xyz: str, options: dict, *, fault: bool = False) -> subprocess.Popen:
    driver = tmp_path / ("fault_driver.py" if fault else "driver.py")
    driver.write_text(DRIVER.format(fault=FAULT if fault else ""))
    molecule = tmp_path / "cluster.xyz"
    molecule.write_text(xyz)
    cmd = [*mpiexec(), "-n", str(ranks), sys.executable, str(driver), str(molecule), json.dumps(options)]
    cmd += [str(tmp_path / "run.sqlite"), str(tmp_path / "result.json")]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, tmp_path: Path) -> tuple[ManyBodyResult, str]:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return ManyBodyResult.model_validate_json((tmp_path / "result.json").read_text()), out


def serial(xyz: str, options: dict, tmp_path: Path) -> ManyBodyResult:
    molecule = tmp_path / "serial.xyz"
    molecule.write_text(xyz)
    return ManyBodyComputer.from_manybodyinput(load_input(molecule, **options))


def world_rank(process: psutil.Process) -> str | None:
    """The MPI rank a launched process was given (MPICH's Hydra or Open MPI), read from its environment."""
    try:
        env = process.environ()
    except psutil.Error:
        return None
    return env.get("PMI_RANK", env.get("OMPI_COMM_WORLD_RANK"))


def checkpoint_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_energy_matches_serial_and_every_rank_works(tmp_path):
    options = {**XTB, "max_nbody": 3}
    xyz = water_cluster(4)
    result, log = finish(launch(tmp_path, 3, xyz, options), tmp_path)
    ref = serial(xyz, options, tmp_path)
    assert result.return_result == pytest.approx(ref.return_result, abs=1e-9)
    for key, value in ref.properties.model_dump().items():
        if key.endswith("_energy_through_3_body") and value is not None:
            assert getattr(result.properties, key) == pytest.approx(value, abs=1e-9), key
    stats = result.extras["qcmb_fractal"]
    assert stats["backend"] == "mpi"
    assert (stats["tasks"], stats["computed"], stats["reused"], stats["failed_attempts"]) == (14, 14, 0, 0)
    assert set(stats["worker_busy"]) == {"mpi-rank-1", "mpi-rank-2"}
    assert "mpi-rank-0 INFO qcmb_fractal.execute.backends.mpi: mpi backend: 2 worker ranks" in log


def test_gradient_matches_serial_on_four_ranks(tmp_path):
    options = {**XTB, "driver": "gradient"}
    result, _ = finish(launch(tmp_path, 4, WATERS[3], options), tmp_path)
    ref = serial(WATERS[3], options, tmp_path)
    assert np.asarray(result.return_result).shape == (9, 3)
    assert np.abs(np.asarray(result.return_result) - np.asarray(ref.return_result)).max() < 1e-8
    assert result.properties.return_energy == pytest.approx(ref.properties.return_energy, abs=1e-9)
    assert set(result.extras["qcmb_fractal"]["worker_busy"]) <= {"mpi-rank-1", "mpi-rank-2", "mpi-rank-3"}


def test_failing_rank_tasks_are_retried_on_another_rank(tmp_path):
    options = {**XTB, "max_nbody": 2}
    xyz = water_cluster(4)
    result, log = finish(launch(tmp_path, 3, xyz, options, fault=True), tmp_path)
    ref = serial(xyz, options, tmp_path)
    assert result.return_result == pytest.approx(ref.return_result, abs=1e-9)
    stats = result.extras["qcmb_fractal"]
    assert stats["failed_attempts"] >= 1
    assert stats["computed"] == 10
    assert set(stats["worker_busy"]) == {"mpi-rank-1"}  # every success came from the healthy rank
    assert "failed on mpi-rank-2" in log
    assert "RuntimeError: fault injected on rank 2" in log


@pytest.mark.slow
def test_killed_rank_ends_run_and_rerun_recomputes_nothing(tmp_path):
    options = {**XTB, "max_nbody": 3}
    xyz = water_cluster(10)
    total = 10 + 45 + 120
    checkpoint = tmp_path / "run.sqlite"
    proc = launch(tmp_path, 3, xyz, options)
    while checkpoint_rows(checkpoint) < 20 and proc.poll() is None:
        time.sleep(0.02)
    victim = next(p for p in psutil.Process(proc.pid).children(recursive=True) if world_rank(p) == "2")
    victim.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    saved = checkpoint_rows(checkpoint)
    assert 20 <= saved < total

    result, _ = finish(launch(tmp_path, 3, xyz, options), tmp_path)
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (saved, total - saved)
    assert checkpoint_rows(checkpoint) == total
    assert result.return_result == pytest.approx(serial(xyz, options, tmp_path).return_result, abs=1e-9)
