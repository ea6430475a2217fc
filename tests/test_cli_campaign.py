"""``qcmb-fractal run`` on several inputs, as a person runs a campaign: real xtb on the local pool, real files.

One campaign over a directory holds two good inputs, one that is not JSON and one whose method xtb refuses:
the good ones equal their single runs, the bad ones get their own error lines, the summary CSV says all
of it, and running the same command again reads everything back from the checkpoints.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.cli import EXIT_FAILED, EXIT_INPUT, main
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, assert_same_result, mbe_input, serial_reference

pytestmark = needs_xtb

POOL = ["--workers", "2", "--no-progress"]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    dimer = mbe_input(water_cluster(2), {"gfn2": XTB_GFN2}, {2: "gfn2"}, bsse=["nocp"])
    trimer = mbe_input(water_trimer(), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"])
    refused = mbe_input(water_cluster(2), {"x": ("xtb", "gfn9-xtb", None)}, {2: "x"}, bsse=["nocp"])
    (folder / "dimer.json").write_text(dimer.model_dump_json())
    (folder / "trimer.json").write_text(trimer.model_dump_json())
    (folder / "refused.json").write_text(refused.model_dump_json())
    (folder / "broken.json").write_text("{not json")
    (folder / "old.result.json").write_text("{}")  # a result, not an input: the directory's inputs skip it
    return folder


def _properties(path: Path) -> dict:
    return json.loads(path.read_text())["properties"]


def test_campaign_equals_single_runs_writes_summary_and_resumes(tmp_path, inputs, monkeypatch, capsys) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rc = main(["run", str(inputs), *POOL])
    out, err = capsys.readouterr()
    assert rc == EXIT_FAILED  # a failed calculation outranks a bad input
    errors = err.strip().splitlines()
    assert [line for line in errors if "broken.json" in line] == [
        f"error: {inputs / 'broken.json'}: broken.json is not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]
    refused = f"error: {inputs / 'refused.json'}: 3 fragment calculation(s) failed"
    assert any(line.startswith(refused) for line in errors)
    assert "2 of 4 inputs finished; summary written to campaign-summary.csv" in out
    assert sorted(p.name for p in work.glob("*.result.json")) == ["dimer.result.json", "trimer.result.json"]

    rows = list(csv.DictReader((work / "campaign-summary.csv").open()))
    assert [(Path(r["input"]).name, r["status"], r["nbody"]) for r in rows] == [
        ("broken.json", "bad input", ""),
        ("dimer.json", "ok", "1"),
        ("dimer.json", "ok", "2"),
        ("refused.json", "failed", ""),
        ("trimer.json", "ok", "1"),
        ("trimer.json", "ok", "2"),
        ("trimer.json", "ok", "3"),
    ]
    trimer = _properties(work / "trimer.result.json")
    assert float(rows[-1]["interaction_energy_eh"]) == trimer["nocp_corrected_interaction_energy_through_3_body"]
    assert float(rows[-1]["total_energy_eh"]) == trimer["nocp_corrected_total_energy_through_3_body"]
    assert rows[-1]["result_file"] == str(work / "trimer.result.json")

    single = tmp_path / "single"
    single.mkdir()
    monkeypatch.chdir(single)
    assert main(["run", str(inputs / "trimer.json"), *POOL]) == 0
    assert not (single / "campaign-summary.csv").exists()  # one input alone is a single run, as ever
    alone = _properties(single / "trimer.result.json")
    for key, value in alone.items():
        if key.endswith("_energy") or "_energy_through_" in key:
            assert trimer[key] == pytest.approx(value, abs=1e-10, rel=0), key
    capsys.readouterr()

    monkeypatch.chdir(work)
    (inputs / "broken.json").unlink()
    (inputs / "refused.json").unlink()
    assert main(["run", str(inputs / "dimer.json"), str(inputs / "trimer.json"), *POOL, "--summary", "again.csv"]) == 0
    out = capsys.readouterr().out
    assert "dimer.json: 3 calculations (0 computed, 3 from checkpoint)" in out
    assert "trimer.json: 7 calculations (0 computed, 7 from checkpoint)" in out
    again = list(csv.DictReader((work / "again.csv").open()))
    assert [r for r in again] == [r for r in rows if r["status"] == "ok"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "x.json"], "-o/--output and --checkpoint name one input's files"),
        (["--summary", "{tmp}/missing/s.csv"], "--summary {tmp}/missing/s.csv is a directory or in one that does not"),
        (["--backend", "qcportal"], "several inputs run on the local or mpi backend"),
    ],
)
def test_campaign_options_refused_in_one_line(tmp_path, inputs, monkeypatch, capsys, extra, message) -> None:
    monkeypatch.chdir(tmp_path)
    extra = [e.format(tmp=tmp_path) for e in extra]
    assert main(["run", str(inputs / "dimer.json"), str(inputs / "trimer.json"), *extra]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(tmp=tmp_path)}") and len(err.strip().splitlines()) == 1


def test_same_stem_twice_and_empty_directory_refused(tmp_path, inputs, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "dimer.json").write_text((inputs / "dimer.json").read_text())
    assert main(["run", str(inputs / "dimer.json"), str(other / "dimer.json")]) == EXIT_INPUT
    assert "would both write dimer.result.json; rename one of them." in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(empty)]) == EXIT_INPUT
    assert f"directory {empty} holds no .json/.yaml inputs" in capsys.readouterr().err


def test_mpi_campaign_equals_qcmanybody_with_a_shared_calculation(tmp_path) -> None:
    """The MPI backend keys its ranks' work by hash: a calculation two inputs share must go out once."""
    pytest.importorskip("mpi4py", reason="the mpi extra is not installed: pip install 'qcmb-fractal[mpi]'")
    exe = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    assert exe, "mpi4py is installed but no mpiexec is on PATH; pip install 'qcmb-fractal[mpi]' brings one"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    open_mpi = ["--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else [])]
    flags = open_mpi if re.search(r"Open MPI|OpenRTE", version) else []
    inputs = {
        "w2": mbe_input(water_cluster(2), {"gfn2": XTB_GFN2}, {2: "gfn2"}, bsse=["nocp"]),
        "w4": mbe_input(water_cluster(4), {"gfn2": XTB_GFN2}, {2: "gfn2"}, bsse=["nocp"]),
    }
    assert {t.hash for t in Plan(inputs["w2"]).tasks} & {t.hash for t in Plan(inputs["w4"]).tasks}
    for name, inp in inputs.items():
        (tmp_path / f"{name}.json").write_text(inp.model_dump_json())
    cmd = [exe, *flags, "-n", "3", sys.executable, "-m", "qcmb_fractal.cli", "run", "w2.json", "w4.json"]
    proc = subprocess.run(
        [*cmd, "--backend", "mpi", "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, inp in inputs.items():
        result = ManyBodyResult.model_validate_json((tmp_path / f"{name}.result.json").read_text())
        assert_same_result(result, serial_reference(inp))
    assert len(list(csv.DictReader((tmp_path / "campaign-summary.csv").open()))) == 4
