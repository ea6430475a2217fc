"""Bad input through the command line: exactly one clear message and exit code 2, never a traceback.

Runs ``main()`` in-process; a run that gets past every check stops where the worker pool would start
(``ProcessPool`` is replaced by a stand-in that raises ``ReachedPool``), so no QC program runs.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import psutil
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qcmb_fractal.cli import main
from qcmb_fractal.execute.resources import GiB

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WATER = [("O", 0.0, 0.0, 0.0), ("H", 0.0, 0.757, 0.587), ("H", 0.0, -0.757, 0.587)]


class ReachedPool(Exception):
    """Stand-in for starting workers: every check before it passed."""


def call(argv: list[str], cwd: Path) -> tuple[int | str, str]:
    """(exit code or 'reached-pool', stderr) of one in-process CLI call."""
    err = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
            mock.patch("qcmb_fractal.execute.pool.ProcessPool", side_effect=ReachedPool),
        ):
            try:
                code: int | str = main(argv)
            except SystemExit as exc:  # argparse: usage line plus one error line, exit 2
                code = exc.code if isinstance(exc.code, int) else 1
            except ReachedPool:
                code = "reached-pool"
    finally:
        os.chdir(old)
    return code, err.getvalue()


def waters(n: int, *, spacing: float = 4.0) -> str:
    blocks = []
    for i in range(n):
        x, y, z = spacing * (i % 5), spacing * ((i // 5) % 5), spacing * (i // 25)
        blocks.append("\n".join(f"{s} {x + a:.4f} {y + b:.4f} {z + c:.4f}" for s, a, b, c in WATER))
    return "\n--\n".join(blocks) + "\n"


def trimer_json(**molecule_changes) -> str:
    data = json.loads((EXAMPLES / "water3-nwchem-hf-cp.json").read_text())
    data["molecule"].update(molecule_changes)
    return json.dumps(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-inputs")
    (d / "water6.xyz").write_text((EXAMPLES / "water6.xyz").read_text())
    (d / "trimer.json").write_text((EXAMPLES / "water3-nwchem-hf-cp.json").read_text())
    (d / "missing-atoms.json").write_text(trimer_json(fragments=[[0, 1, 2], [3, 4, 5]]))
    (d / "overlap.json").write_text(trimer_json(fragments=[[0, 1, 2], [2, 3, 4, 5], [6, 7, 8]]))
    (d / "non-contiguous.json").write_text(trimer_json(fragments=[[0, 1, 3], [2, 4, 5], [6, 7, 8]]))
    (d / "radical-mult.json").write_text(trimer_json(fragment_multiplicities=[2, 1, 1], fragment_charges=[0, 0, 0]))
    (d / "single.xyz").write_text(waters(1))
    (d / "nan.xyz").write_text(waters(2).replace("0.0000 0.0000 0.0000", "nan 0.0000 0.0000", 1))
    (d / "huge.xyz").write_text(waters(2).replace("0.0000 0.0000 0.0000", "1e9 0.0000 0.0000", 1))
    (d / "radicals20.xyz").write_text("\n--\n".join(f"H {2.0 * i} 0 0" for i in range(20)))
    (d / "water30.xyz").write_text(waters(30))
    (d / "water120.xyz").write_text(waters(120))
    (d / "empty.xyz").write_text("")
    (d / "garbage.json").write_bytes(os.urandom(256))
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "a-directory.json").mkdir()
    (d / "not-a-dir").write_text("a file")
    (d / "ckpt-dir").mkdir()
    (d / "elsewhere.json").write_text("{}")
    (d / "link.json").symlink_to(d / "elsewhere.json")
    return d


XTB = ["--program", "xtb", "--method", "gfn2-xtb"]
CASES = {
    "missing fragments": (["plan", "missing-atoms.json"], "cover every atom exactly once"),
    "overlapping fragments": (["plan", "overlap.json"], "must not overlap"),
    "non-contiguous fragments": (["plan", "non-contiguous.json"], "contiguous blocks"),
    "single fragment": (["plan", "single.xyz", *XTB], "at least two fragments"),
    "empty molecule file": (["plan", "empty.xyz", *XTB], "at least two fragments"),
    "max n-body above fragments": (["plan", "water6.xyz", *XTB, "--max-nbody", "7"], "max_nbody=7 must lie"),
    "max n-body zero": (["plan", "water6.xyz", *XTB, "--max-nbody", "0"], "max_nbody=0 must lie"),
    "max n-body negative": (["plan", "water6.xyz", *XTB, "--max-nbody", "-2"], "max_nbody=-2 must lie"),
    "unknown program": (["plan", "water6.xyz", "--program", "gaussian", "--method", "hf"], "Installed here: "),
    "program not installed": (["run", "water6.xyz", "--program", "psi4", "--method", "hf"], "not installed on this"),
    "cp with ghost-blind program": (["plan", "water6.xyz", *XTB, "--bsse", "cp"], "needs ghost atoms"),
    "vmfc with ghost-blind program": (["plan", "water6.xyz", *XTB, "--bsse", "nocp", "vmfc"], "needs ghost atoms"),
    "inconsistent multiplicity": (["plan", "radical-mult.json"], "do not fit the electron counts"),
    "20 radicals, no charges": (["plan", "radicals20.xyz", *XTB], "cannot be inferred"),
    "NaN coordinate": (["plan", "nan.xyz", *XTB], "NaN or infinite"),
    "huge coordinate": (["plan", "huge.xyz", *XTB], "beyond 1e5 bohr"),
    "cluster too large": (["plan", "water120.xyz", *XTB, "--max-nbody", "4"], "more than 200,000"),
    "over a lowered task limit": (
        ["plan", "water30.xyz", *XTB, "--max-nbody", "3", "--max-tasks", "1000"],
        "--max-tasks",
    ),
    "task limit below 1": (["plan", "water6.xyz", *XTB, "--max-tasks", "0"], "--max-tasks must be"),
    "no workers": (["run", "water6.xyz", *XTB, "--workers", "0"], "--workers must be between 1"),
    "a billion workers": (["run", "water6.xyz", *XTB, "--workers", "1000000000"], "--workers must be between 1"),
    "negative memory": (["run", "water6.xyz", *XTB, "--memory", "-1"], "--memory"),
    "NaN memory": (["run", "water6.xyz", *XTB, "--memory", "nan"], "--memory"),
    "petabyte memory": (["run", "water6.xyz", *XTB, "--memory", "1e6"], "--memory"),
    "zero cores": (["run", "water6.xyz", *XTB, "--cores-per-task", "0"], "--cores-per-task"),
    "zero timeout": (["run", "water6.xyz", *XTB, "--timeout", "0"], "--timeout must be"),
    "NaN timeout": (["run", "water6.xyz", *XTB, "--timeout", "nan"], "--timeout must be"),
    "zero attempts": (["run", "water6.xyz", *XTB, "--max-attempts", "0"], "--max-attempts"),
    "output is a symlink": (["run", "water6.xyz", *XTB, "-o", "link.json"], "symbolic link"),
    "output over the input": (["run", "trimer.json", "-o", "trimer.json"], "is the input file"),
    "output == checkpoint": (["run", "water6.xyz", *XTB, "-o", "x.json", "--checkpoint", "x.json"], "same file"),
    "output dir missing": (["run", "water6.xyz", *XTB, "-o", "nowhere/x.json"], "does not exist"),
    "output is a directory": (["run", "water6.xyz", *XTB, "-o", "ckpt-dir"], "is a directory"),
    "checkpoint is a directory": (["run", "water6.xyz", *XTB, "--checkpoint", "ckpt-dir"], "is a directory"),
    "scratch is a file": (["run", "water6.xyz", *XTB, "--scratch", "not-a-dir"], "is not a directory"),
    "input missing": (["plan", "nothing-here.json"], "cannot read input file"),
    "input is a directory": (["plan", "a-directory.json"], "cannot read input file"),
    "input is binary garbage": (["plan", "garbage.json"], "garbage.json"),
    "input is a YAML list": (["plan", "list.yaml"], "must be a mapping"),
    "unknown BSSE treatment": (["plan", "water6.xyz", *XTB, "--bsse", "xyz"], "invalid choice"),
    "unknown backend": (["run", "water6.xyz", *XTB, "--backend", "cloud"], "invalid choice"),
    "non-numeric workers": (["run", "water6.xyz", *XTB, "--workers", "two"], "invalid int value"),
}


@pytest.mark.parametrize(("argv", "message"), list(CASES.values()), ids=list(CASES))
def test_bad_input_gets_one_clear_message_and_exit_2(files, argv, message):
    code, stderr = call(argv, files)
    assert code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1, stderr
    assert "ckpt-dir.corrupt" not in " ".join(p.name for p in files.iterdir())


def test_a_raised_task_limit_lets_the_plan_through(files):
    code, stderr = call(["plan", "water30.xyz", *XTB, "--max-nbody", "3", "--max-tasks", "5000"], files)
    assert code == 0, stderr


def test_known_but_missing_program_still_plans(files):
    """Planning for a server whose workers have psi4 is fine; only running it here is refused."""
    code, stderr = call(["plan", "water6.xyz", "--program", "psi4", "--method", "hf"], files)
    assert code == 0, stderr


def test_unknown_method_fails_at_run_time_with_a_clear_table(files, tmp_path):
    """QCEngine cannot tell a bad method before running; the failure table must say so, once per task."""
    argv = ["run", str(files / "water6.xyz"), "--program", "xtb", "--method", "gfn9-xtb", "--max-nbody", "1"]
    argv += ["--workers", "1", "--no-progress", "-o", str(tmp_path / "r.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "qcmb_fractal.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr
    assert "6 fragment calculation(s) failed" in proc.stderr
    assert proc.stderr.count("input_error: Invalid method gfn9-xtb provided in model") >= 6
    assert "attempt 2 of" not in proc.stderr  # an input error is not retried
    assert "Traceback" not in proc.stderr


OPTION_VALUES = {
    "--program": ["xtb", "nwchem", "gaussian", "", "psi4"],
    "--method": ["gfn2-xtb", "hf", ""],
    "--basis": ["sto-3g", ""],
    "--bsse": ["nocp", "cp", "vmfc", "bogus"],
    "--max-nbody": ["-1", "0", "1", "2", "99", "x"],
    "--driver": ["energy", "gradient", "hessian", "bogus"],
    "--max-tasks": ["-1", "0", "10", "1000000000", "x"],
    "--workers": ["-1", "0", "1", "2", "1000000", "two"],
    "--memory": ["-1", "0", "0.01", "1", "1e9", "nan", "inf"],
    "--cores-per-task": ["0", "1", "64"],
    "--timeout": ["-1", "0", "nan", "inf", "30"],
    "--scratch": ["scratch", "not-a-dir", "/proc/forbidden"],
    "-o": ["out.json", "ckpt-dir", "trimer.json", "nowhere/x.json", "link.json"],
    "--checkpoint": ["out.sqlite", "ckpt-dir", "out.json", "link.json"],
    "--mode": ["eager", "levels", "bogus"],
    "--max-attempts": ["-1", "0", "1", "3"],
    "--backend": ["local", "bogus"],
}
RUN_ONLY = {"--workers", "--memory", "--cores-per-task", "--timeout", "--scratch", "-o", "--checkpoint"}
RUN_ONLY |= {"--mode", "--max-attempts", "--backend"}
INPUTS = ["water6.xyz", "trimer.json", "single.xyz", "nan.xyz", "garbage.json", "list.yaml", "missing.json"]


@st.composite
def argvs(draw) -> list[str]:
    command = draw(st.sampled_from(["plan", "run"]))
    argv = [command, draw(st.sampled_from(INPUTS))]
    names = [n for n in OPTION_VALUES if command == "run" or n not in RUN_ONLY]
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=7)):
        argv += [name, draw(st.sampled_from(OPTION_VALUES[name]))]
    if command == "run" and draw(st.booleans()):
        argv.append("--no-checkpoint")
    return argv


@settings(
    max_examples=500,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(argv=argvs())
def test_any_command_line_ends_cleanly(argv):
    """Any mix of options: runs (up to the worker pool), or exit 2 with one message; never a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        _populate(cwd)
        code, stderr = call(argv, cwd)
        assert code in (0, 2, "reached-pool"), (code, stderr)
        assert "Traceback" not in stderr
        if code == 2:
            errors = [line for line in stderr.splitlines() if line.startswith("error:") or ": error: " in line]
            assert len(errors) == 1, stderr
            event("exit 2")
        else:
            event(str(code))
        assert not any(p.name.startswith("ckpt-dir.corrupt") for p in cwd.iterdir())
        assert not list(cwd.glob("scratch/qcmb-scratch-*")), "scratch left behind"


def _populate(d: Path) -> None:
    (d / "water6.xyz").write_text((EXAMPLES / "water6.xyz").read_text())
    (d / "trimer.json").write_text((EXAMPLES / "water3-nwchem-hf-cp.json").read_text())
    (d / "single.xyz").write_text(waters(1))
    (d / "nan.xyz").write_text(waters(2).replace("0.0000 0.0000 0.0000", "nan 0.0000 0.0000", 1))
    (d / "garbage.json").write_bytes(bytes(range(256)))
    (d / "list.yaml").write_text("- 1\n")
    (d / "not-a-dir").write_text("a file")
    (d / "ckpt-dir").mkdir()
    (d / "elsewhere.json").write_text("{}")
    (d / "link.json").symlink_to(d / "elsewhere.json")


def test_too_many_workers_for_free_memory_shrink_with_a_visible_warning(files):
    """64 workers on 3 GiB free: the run goes ahead with what fits and says so on stderr."""
    with mock.patch.object(psutil, "virtual_memory", return_value=mock.Mock(available=3 * GiB)):
        code, stderr = call(["run", "water6.xyz", *XTB, "--workers", "64", "--no-checkpoint"], files)
    assert code == "reached-pool", stderr
    assert "64 workers × 1.00 GiB do not fit in 3.0 GiB of free memory; using 2 workers" in stderr
