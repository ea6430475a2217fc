"""Log records of the driver, every local worker and every MPI rank go to one file, each naming its process."""

import json
import logging
import multiprocessing
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from qcmb_fractal import logs
from qcmb_fractal.logs import JsonFormatter, LogSettings, configure_logging, current_log_settings
from qcmb_fractal.testing.molecules import water_cluster_text
from qcmb_fractal.testing.programs import needs_xtb

CLI = [sys.executable, "-m", "qcmb_fractal.cli"]
XTB = ["--program", "xtb", "--method", "gfn2-xtb", "--max-nbody", "2", "--no-progress", "--no-checkpoint"]


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_record_names_process_level_and_exception():
    try:
        raise ValueError("bad geometry")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("qcmb_fractal.x", logging.ERROR, __file__, 1, "task %s failed", ("t1",), exc_info)
    record.processName = "local-worker-42"
    out = json.loads(JsonFormatter().format(record))
    assert out["process"] == "local-worker-42"
    assert out["level"] == "ERROR"
    assert out["logger"] == "qcmb_fractal.x"
    assert out["message"] == "task t1 failed"
    assert "ValueError: bad geometry" in out["exception"]
    assert out["time"].endswith("+00:00")


def test_file_keeps_info_while_the_terminal_shows_warnings(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logs, "_CURRENT", None)  # restored afterwards: later workers must not log to this file
    monkeypatch.setattr(multiprocessing.current_process(), "name", "local-worker-7")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log = tmp_path / "run.log"
    try:
        configure_logging(LogSettings(level=logging.WARNING, file=str(log), format="text"))
        logging.getLogger("qcmb_fractal.test").info("kept in the file only")
        logging.getLogger("qcmb_fractal.test").warning("in both")
        assert current_log_settings().file == str(log)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" local-worker-7 INFO qcmb_fractal.test: kept in the file only")
    assert lines[1].endswith(" local-worker-7 WARNING qcmb_fractal.test: in both")
    assert "kept in the file only" not in capsys.readouterr().err


@needs_xtb
def test_local_run_logs_driver_and_each_worker_to_one_json_file(tmp_path):
    (tmp_path / "w4.xyz").write_text(water_cluster_text(4))
    cmd = [*CLI, "-vv", "run", "w4.xyz", *XTB, "--workers", "2", "--log-file", "run.log", "--log-format", "json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = json_lines(tmp_path / "run.log")
    driver = [r["message"] for r in records if r["process"] == "driver"]
    assert any("10 fragment calculations planned" in m for m in driver)
    done = [r for r in records if " done on " in r["message"]]
    assert len(done) == 10  # one record per calculation, from the worker that ran it (however the work fell)
    for r in done:
        assert r["process"].startswith("local-worker-")
        assert r["message"].split(" done on ")[1].startswith(r["process"] + " ")
        assert r["pid"] == int(r["process"].removeprefix("local-worker-"))


def test_unwritable_log_file_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [*CLI, "run", "x.xyz", "--log-file", str(tmp_path / "missing" / "run.log")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: cannot open --log-file" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_xtb
def test_mpi_ranks_log_to_the_same_file_each_named(tmp_path):
    pytest.importorskip("mpi4py", reason="the [mpi] extra (mpi4py) is not installed")
    mpiexec = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    assert mpiexec is not None, "mpi4py is installed but no mpiexec is on PATH"
    (tmp_path / "w3.xyz").write_text(water_cluster_text(3))
    cmd = [mpiexec, "-n", "3", *CLI, "-vv", "run", "w3.xyz", *XTB, "--backend", "mpi", "--log-file", "run.log"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "run.log").read_text().splitlines()
    names = {line.split()[2] for line in lines}  # date, time, process name, level, ...
    assert {"mpi-rank-0", "mpi-rank-1", "mpi-rank-2"} <= names, names
    done = [line for line in lines if " done on mpi-rank-" in line]
    assert len(done) == 6 and all(line.split()[2] in {"mpi-rank-1", "mpi-rank-2"} for line in done)
