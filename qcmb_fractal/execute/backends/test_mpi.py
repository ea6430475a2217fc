"""The MPI backend under a real ``mpiexec`` with 3-4 ranks, against QCManyBody's serial computer."""

import json
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

CLI = [sys.executable, "-m", "qcmb_fractal.cli", "-v", "run"]

# Runs again as __mp_main__ in every rank's compute child: there, every calculation on rank 2 fails
# (QCMB_TEST_FAULT=fail) or takes a second longer (QCMB_TEST_FAULT=slow).
FAULT_DRIVER = """
import json, logging, multiprocessing, os, sys, time
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
        time.sleep(1.0)  # "slow": rank 2 is a straggler
    return _real_compute(*args, **kwargs)

qcengine.compute = fault_compute

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
        atoms = [("O", o), ("H", o + np.array([0.757, 0.586, 0.0])), ("H", o + np.array([-0.757, 0.586, 0.0]))]
        blocks.append("\n".join(f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in atoms))
    return "\n--\n".join(blocks)


@cache
def launcher() -> tuple[str, str]:
    """The mpiexec that belongs to the installed MPI (the wheel's, beside this Python) and its version text."""
    exe = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpi4py is installed but no mpiexec is on PATH; pip install 'qcmb-fractal[mpi]' brings one")
    return exe, subprocess.run([exe, "--version"], capture_output=True, text=True).stdout


def open_mpi_major() -> int | None:
    match = re.search(r"\(Open MPI\) (\d+)\.", launcher()[1]) or re.search(r"OpenRTE\) (\d+)\.", launcher()[1])
    return int(match.group(1)) if match else None


def mpiexec() -> tuple[str, ...]:
    """The launch command with what it needs on a 2-core machine, as root."""
    if open_mpi_major() is None:
        return (launcher()[0],)
    return (launcher()[0], "--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else []))


def launch(tmp_path: Path, ranks: int, xyz: str, options: dict, launch_flags: tuple[str, ...] = ()) -> subprocess.Popen:
    """``mpiexec -n RANKS qcmb-fractal run cluster.xyz --backend mpi``, result in result.json, checkpoint beside."""
    molecule = tmp_path / "cluster.xyz"
    molecule.write_text(xyz)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items() if key != "bsse"]
    flags += ["--bsse", *options["bsse"]] if "bsse" in options else []
    cmd = [*mpiexec(), *launch_flags, "-n", str(ranks), *CLI, str(molecule), *flags, "--backend", "mpi"]
    cmd += ["--no-progress", "-o", str(tmp_path / "result.json")]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch_fault_driver(tmp_path: Path, ranks: int, xyz: str, options: dict, fault: str) -> subprocess.Popen:
    """The Runner API under mpiexec, with a fault injected into rank 2's compute child."""
    driver = tmp_path / "fault_driver.py"
    driver.write_text(FAULT_DRIVER)
    molecule = tmp_path / "cluster.xyz"
    molecule.write_text(xyz)
    cmd = [*mpiexec(), "-n", str(ranks), sys.executable, str(driver), str(molecule), json.dumps(options)]
    cmd += [str(tmp_path / "result.sqlite"), str(tmp_path / "result.json")]
    env = {**os.environ, "QCMB_TEST_FAULT": fault}
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, tmp_path: Path) -> tuple[ManyBodyResult, str]:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return ManyBodyResult.model_validate_json((tmp_path / "result.json").read_text()), out


_SERIAL: dict[str, ManyBodyResult] = {}


def serial(xyz: str, options: dict, tmp_path: Path) -> ManyBodyResult:
    """QCManyBody's serial computer on the same input: the reference every backend must match."""
    key = json.dumps([xyz, options], sort_keys=True)
    if key not in _SERIAL:
        molecule = tmp_path / "serial.xyz"
        molecule.write_text(xyz)
        _SERIAL[key] = ManyBodyComputer.from_manybodyinput(load_input(molecule, **options))
    return _SERIAL[key]


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
    assert "14 calculations (14 computed, 0 from checkpoint)" in log
    assert "on 2 mpi workers" in log


@pytest.mark.parametrize(
    ("ranks", "args", "message"),
    [
        (3, ["missing.xyz"], "error: cannot read input file missing.xyz"),
        (1, ["cluster.xyz"], "error: the mpi backend needs at least 2 MPI ranks"),
        (3, ["cluster.xyz", "--workers", "2"], "error: --workers does not apply to --backend mpi"),
    ],
)
def test_bad_setup_is_one_clear_error_and_every_rank_ends(tmp_path, ranks, args, message):
    (tmp_path / "cluster.xyz").write_text(WATERS[3])
    cmd = [*mpiexec(), "-n", str(ranks), *CLI, *args, "--program", "xtb", "--method", "gfn2-xtb", "--backend", "mpi"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.nwchem
def test_nwchem_cp_gradient_matches_serial_on_four_ranks(tmp_path):
    # NWChem, not xtb: QCManyBody's serial computer needs properties.return_gradient, which xtb leaves unset.
    options = {"program": "nwchem", "method": "hf", "basis": "sto-3g", "bsse": ["cp"], "max_nbody": 2}
    options["driver"] = "gradient"
    result, _ = finish(launch(tmp_path, 4, WATERS[3], options), tmp_path)
    ref = serial(WATERS[3], options, tmp_path)
    grad, ref_grad = np.ravel(result.return_result), np.ravel(ref.return_result)
    assert grad.shape == (27,)
    assert np.abs(grad - ref_grad).max() < 1e-8
    assert result.properties.return_energy == pytest.approx(ref.properties.return_energy, abs=1e-9)
    assert set(result.extras["qcmb_fractal"]["worker_busy"]) <= {"mpi-rank-1", "mpi-rank-2", "mpi-rank-3"}


def test_failing_rank_tasks_are_retried_on_another_rank(tmp_path):
    options = {**XTB, "max_nbody": 2}
    xyz = water_cluster(4)
    result, log = finish(launch_fault_driver(tmp_path, 3, xyz, options, "fail"), tmp_path)
    ref = serial(xyz, options, tmp_path)
    assert result.return_result == pytest.approx(ref.return_result, abs=1e-9)
    stats = result.extras["qcmb_fractal"]
    assert stats["failed_attempts"] >= 1
    assert stats["computed"] == 10
    assert set(stats["worker_busy"]) == {"mpi-rank-1"}  # every success came from the healthy rank
    assert "failed on mpi-rank-2" in log
    assert "RuntimeError: fault injected on rank 2" in log


def test_a_straggling_rank_gets_less_work(tmp_path):
    options = {**XTB, "max_nbody": 2}
    xyz = water_cluster(4)
    result, _ = finish(launch_fault_driver(tmp_path, 3, xyz, options, "slow"), tmp_path)
    with sqlite3.connect(tmp_path / "result.sqlite") as db:
        done = dict(db.execute("SELECT worker, COUNT(*) FROM results GROUP BY worker").fetchall())
    # 10 calculations: rank 2 takes over a second each, rank 1 a few ms, so rank 1 takes what rank 2 has not started
    assert done.get("mpi-rank-1", 0) >= 7, done
    assert sum(done.values()) == 10
    assert result.return_result == pytest.approx(serial(xyz, options, tmp_path).return_result, abs=1e-9)


@pytest.mark.slow
def test_killed_rank_ends_run_and_rerun_recomputes_nothing(tmp_path):
    options = {**XTB, "max_nbody": 3}
    xyz = water_cluster(8)
    total = 8 + 28 + 56
    checkpoint = tmp_path / "result.sqlite"
    proc = launch(tmp_path, 3, xyz, options)  # the checkpoint is result.sqlite, beside the output
    while checkpoint_rows(checkpoint) < 1 and proc.poll() is None:
        time.sleep(0.01)
    tree = psutil.Process(proc.pid).children(recursive=True)
    victim = next(p for p in tree if world_rank(p) == "2")
    victim.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    saved = checkpoint_rows(checkpoint)
    assert 1 <= saved < total
    time.sleep(1)
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []

    result, log = finish(launch(tmp_path, 3, xyz, options), tmp_path)
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (saved, total - saved)
    assert f"{total} calculations ({total - saved} computed, {saved} from checkpoint)" in log
    assert checkpoint_rows(checkpoint) == total
    # ManyBodyComputer.from_manybodyinput on this input (serial, 92 xtb calls: 8 s here, so not redone each run)
    assert result.return_result == pytest.approx(0.020886007837972898, abs=1e-9)


@pytest.mark.slow
def test_killed_rank_under_ulfm_leaves_the_run_to_the_others(tmp_path):
    if (open_mpi_major() or 0) < 5:
        pytest.skip("surviving a dead rank needs Open MPI >= 5 (mpiexec --with-ft ulfm); this MPI ends the job")
    options = {**XTB, "max_nbody": 3}
    checkpoint = tmp_path / "result.sqlite"
    proc = launch(tmp_path, 3, water_cluster(8), options, ("--with-ft", "ulfm"))
    while checkpoint_rows(checkpoint) < 1 and proc.poll() is None:
        time.sleep(0.01)
    victim = next(p for p in psutil.Process(proc.pid).children(recursive=True) if world_rank(p) == "2")
    victim.send_signal(signal.SIGKILL)
    result, log = finish(proc, tmp_path)
    assert "mpi-rank-0 ERROR qcmb_fractal.execute.backends.mpi: mpi-rank-2 died" in log
    stats = result.extras["qcmb_fractal"]
    assert (stats["computed"], stats["reused"]) == (92, 0)
    assert result.return_result == pytest.approx(0.020886007837972898, abs=1e-9)  # serial value, as above


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
