"""Screening from the command line: the options and the input-file form, the final table, bad
combinations, a SIGKILLed screened run resumed, and the MPI backend. Each run is a real subprocess."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.plan import ScreeningSettings, plain_input, with_screening
from qcmb_fractal.plan.inputs import parse_plain_molecule
from qcmb_fractal.testing.molecules import water_cluster, water_cluster_text, water_trimer
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, assert_same_result, mbe_input, serial_reference

CLI = [sys.executable, "-m", "qcmb_fractal.cli"]
XTB = ["--program", "xtb", "--method", "gfn2-xtb", "--max-nbody", "3"]


def cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def water5(tmp_path: Path) -> Path:
    path = tmp_path / "water5.xyz"
    path.write_text(water_cluster_text(5))
    return path


@needs_xtb
def test_screened_run_from_options_and_from_the_input_file_agree(tmp_path: Path, water5: Path) -> None:
    planned = cli(tmp_path, "plan", str(water5), *XTB, "--screen", "xtb/gfn1-xtb", "--json")
    assert planned.returncode == 0, planned.stderr
    summary = json.loads(planned.stdout)
    assert summary["tasks"] == 10 and summary["screening"]["threshold"] == 0.01

    run = cli(tmp_path, "run", str(water5), *XTB, "--screen", "xtb/gfn1-xtb", "--screen-threshold", "0.05")
    assert run.returncode == 0, run.stderr
    assert "screened with xtb/gfn1-xtb, threshold 0.05 kcal/mol" in run.stdout
    result = json.loads((tmp_path / "water5.result.json").read_text())
    screening = result["extras"]["qcmb_fractal"]["screening"]
    assert f"target calculations {screening['target_calculations']} of 25" in run.stdout
    assert screening["target_calculations"] < 25
    shown = cli(tmp_path, "show", "water5.result.json")  # a finished screened result says it is one
    assert shown.returncode == 0 and f"target calculations {screening['target_calculations']} of 25" in shown.stdout

    # The same settings written into a QCSchema input reuse every calculation of the checkpoint.
    inp = plain_input(parse_plain_molecule(water5.read_text()), program="xtb", method="gfn2-xtb", max_nbody=3)
    file_form = tmp_path / "water5.json"
    settings = ScreeningSettings(program="xtb", method="gfn1-xtb", threshold=1.0)
    file_form.write_text(with_screening(inp, settings).model_dump_json())
    args = ["run", str(file_form), "--checkpoint", "water5.result.sqlite", "--screen-threshold", "0.05"]
    again = cli(tmp_path, *args, "-o", "again.json")  # the option overrides the file's threshold
    assert again.returncode == 0, again.stderr
    again_result = json.loads((tmp_path / "again.json").read_text())
    stats = again_result["extras"]["qcmb_fractal"]
    assert (stats["computed"], stats["screening"]) == (0, screening)
    assert again_result["properties"] == result["properties"]
    assert again_result["input_data"]["specification"]["extras"]["qcmb_fractal"]["screening"]["threshold"] == 0.05


@needs_xtb
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--screen-threshold", "1"], "--screen-distance and --screen-contact need --screen"),
        (["--screen", "xtb"], "is not PROGRAM/METHOD[/BASIS]"),
        (["--screen", "xtb/gfn1-xtb", "--screen-distance", "-2"], "distance: Input should be greater than 0"),
        (["--screen", "xtb/gfn2-xtb"], "is the target's own"),
        (["--screen", "xtb/gfn1-xtb", "--bsse", "nocp", "cp", "--program", "nwchem"], "nocp'] only"),
    ],
)
def test_bad_screening_options_get_one_line_and_exit_2(tmp_path: Path, water5: Path, args, message) -> None:
    proc = cli(tmp_path, "run", str(water5), *XTB, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def saved_labels(path: Path) -> set[str]:
    try:
        with sqlite3.connect(path) as db:
            return {row[0] for row in db.execute("SELECT label FROM results")}
    except sqlite3.Error:
        return set()


@needs_nwchem
@needs_xtb
@pytest.mark.nwchem
def test_sigkilled_screened_run_resumes_and_recomputes_nothing_committed(tmp_path: Path) -> None:
    """NWChem HF/sto-3g target (slow enough to kill mid-run), xtb screening, nothing screened away."""
    inp = with_screening(
        mbe_input(water_trimer(), {"hf": NWCHEM_HF}, {3: "hf"}, bsse=["nocp"]),
        ScreeningSettings(program="xtb", method="gfn1-xtb", threshold=0.0),
    )
    path = tmp_path / "trimer.json"
    path.write_text(inp.model_dump_json())
    ckpt = tmp_path / "trimer.result.sqlite"
    cmd = [*CLI, "run", str(path), "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and len(saved_labels(ckpt)) < 8:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job dies, workers included
    proc.wait()
    before = saved_labels(ckpt)
    assert 8 <= len(before) < 14 and any(label.startswith('["(screen)", [1, 2]') for label in before)

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    result = ManyBodyResult.model_validate_json((tmp_path / "trimer.result.json").read_text())
    stats = result.extras["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (len(before), 14 - len(before))
    assert not set(stats["task_time"]) & before  # what was committed is not computed again
    assert_same_result(result, serial_reference(inp))


def mpiexec() -> list[str]:
    """The mpiexec of the installed MPI, with what Open MPI needs on a small machine and as root."""
    exe = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpi4py is installed but no mpiexec is on PATH; pip install 'qcmb-fractal[mpi]' brings one")
    if "Open MPI" not in subprocess.run([exe, "--version"], capture_output=True, text=True).stdout:
        return [exe]
    return [exe, "--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else [])]


@needs_xtb
def test_nothing_screened_on_the_mpi_backend_equals_qcmanybody(tmp_path: Path) -> None:
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install '.[mpi]')")
    inp = with_screening(
        mbe_input(water_cluster(4), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], driver="gradient"),
        ScreeningSettings(program="xtb", method="gfn1-xtb", threshold=0.0),
    )
    (tmp_path / "input.json").write_text(inp.model_dump_json())
    cmd = [*mpiexec(), "-n", "3", *CLI, "run", "input.json", "--backend", "mpi", "--no-progress", "-o", "out.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = ManyBodyResult.model_validate_json((tmp_path / "out.json").read_text())
    reference = ManyBodyResult.model_validate_json(serial_reference(inp).model_dump_json())
    assert_same_result(result, reference)
    stats = result.extras["qcmb_fractal"]
    assert (stats["backend"], stats["computed"], stats["screening"]["target_calculations"]) == ("mpi", 28, 14)
