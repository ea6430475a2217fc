"""The command line as a person uses it: real programs, real files, real exit codes."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.cli import main
from qcmb_fractal.plan import Plan, load_input

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLI = [sys.executable, "-m", "qcmb_fractal.cli"]


def test_plan_prints_counts_per_level(capsys):
    assert main(["plan", str(EXAMPLES / "water6-nwchem-hf-cp.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    _, expected = Plan(load_input(EXAMPLES / "water6-nwchem-hf-cp.json")).core.format_calc_plan()
    assert out["tasks"] == 82
    assert out["counts"] == {mc: {str(n): c for n, c in counts.items()} for mc, counts in expected.items()}


def test_plain_molecule_file_with_options(tmp_path, capsys):
    out = tmp_path / "w6.json"
    rc = main(
        [
            "run",
            str(EXAMPLES / "water6.xyz"),
            "--program",
            "xtb",
            "--method",
            "gfn2-xtb",
            "--max-nbody",
            "2",
            "--workers",
            "2",
            "--no-progress",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    ie2 = result["properties"]["nocp_corrected_interaction_energy_through_2_body"]
    assert ie2 == pytest.approx(-0.0499601103, abs=1e-8)
    assert f"{ie2:20.10f}" in printed
    assert (tmp_path / "w6.result.sqlite").exists() is False  # checkpoint sits next to the output
    assert (tmp_path / "w6.sqlite").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.json"], "cannot read input file missing.json"),
        (["run", "{water6}"], "--program and --method are needed"),
        (["run", "{water6}", "--program", "xtb", "--method", "gfn2-xtb", "--bsse", "cp"], "needs ghost atoms"),
        (["run", "{water6}", "--program", "xtb", "--method", "gfn2-xtb", "--max-nbody", "9"], "max_nbody=9"),
        (["run", "{water6}", "--program", "xtb", "--method", "gfn2-xtb", "--workers", "0"], "--workers must be"),
        (
            ["run", "{water6}", "--program", "xtb", "--method", "gfn2-xtb", "-o", "/nonexistent/x.json"],
            "does not exist",
        ),
        (["run", "{xyz_json}"], "is not valid JSON"),
    ],
)
def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path, args, message):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    args = [a.format(water6=EXAMPLES / "water6.xyz", xyz_json=bad_json) for a in args]
    proc = subprocess.run(CLI + args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def _count_calls(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Put a counting shim in front of the real nwchem: every calculation appends a line.

    QCEngine also runs ``nwchem v.nw`` once per worker to read the version; that is not a calculation.
    """
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counter = tmp_path / "calls.txt"
    real = subprocess.run(["which", "nwchem"], capture_output=True, text=True, check=True).stdout.strip()
    shim = bindir / "nwchem"
    shim.write_text(f'#!/bin/sh\n[ "$1" = v.nw ] || echo call >> "{counter}"\nexec {real} "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return env, counter


def _saved(ckpt: Path) -> int:
    if not ckpt.exists():
        return 0
    try:
        with sqlite3.connect(ckpt) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.mark.nwchem
def test_sigkill_halfway_then_rerun_recomputes_nothing_finished(tmp_path):
    example = EXAMPLES / "water3-nwchem-hf-cp.json"
    env, counter = _count_calls(tmp_path)
    out = tmp_path / "trimer.json"
    ckpt = tmp_path / "trimer.sqlite"
    cmd = [*CLI, "run", str(example), "--workers", "2", "--no-progress", "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and _saved(ckpt) < 5:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job dies, workers included, as on a lost node
    proc.wait()
    saved = _saved(ckpt)
    assert 5 <= saved < 13
    calls_before = _calls(counter)

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _calls(counter) - calls_before == 13 - saved
    stats = json.loads(out.read_text())["extras"]["qcmb_fractal"]
    assert (stats["reused"], stats["computed"]) == (saved, 13 - saved)

    reference = ManyBodyComputer.from_manybodyinput(load_input(example))
    result = json.loads(out.read_text())
    assert result["return_result"] == pytest.approx(reference.return_result, abs=1e-9)
    for key in ("cp_corrected_interaction_energy_through_2_body", "nocp_corrected_total_energy_through_3_body"):
        assert result["properties"][key] == pytest.approx(getattr(reference.properties, key), abs=1e-9)
    leftovers = list(Path("/tmp").glob(f"qcmb-scratch-{proc.pid}-*"))
    assert leftovers == [], "the rerun must sweep the killed run's scratch"
