"""``qcmb-fractal show`` and ``plot`` on a real finished run (NWChem HF/STO-3G water trimer, nocp and cp)."""

import errno
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from qcelemental import constants

from qcmb_fractal.cli import main
from qcmb_fractal.report import figure, load_result
from qcmb_fractal.testing.programs import needs_nwchem

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLI = [sys.executable, "-m", "qcmb_fractal.cli"]
KCAL = constants.hartree2kcalmol

pytestmark = [needs_nwchem, pytest.mark.nwchem]


@pytest.fixture(scope="module")
def result_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "w3.result.json"
    rc = main(["run", str(EXAMPLES / "water3-nwchem-hf-cp.json"), "--no-progress", "--no-checkpoint", "-o", str(out)])
    assert rc == 0
    return out


def test_show_prints_what_ran_and_every_level(result_path, capsys):
    props = json.loads(result_path.read_text())["properties"]
    assert main(["show", str(result_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "water trimer: 3 fragments, nwchem hf/sto-3g"
    rows = [line.split() for line in out if line.startswith(("nocp ", "cp "))]
    assert [(r[0], int(r[1])) for r in rows] == [(b, n) for b in ("nocp", "cp") for n in (1, 2, 3)]
    for bsse, n, total, ie, ie_kcal in rows:
        assert float(total) == pytest.approx(props[f"{bsse}_corrected_total_energy_through_{n}_body"], abs=1e-10)
        assert float(ie) == pytest.approx(props[f"{bsse}_corrected_interaction_energy_through_{n}_body"], abs=1e-10)
        assert float(ie_kcal) == pytest.approx(float(ie) * KCAL, abs=1e-5)
    assert out[-1].startswith("13 calculations (13 computed, 0 from checkpoint) in ")
    assert "local backend" in out[-1]


def test_show_of_a_result_without_run_statistics_prints_the_table_only(result_path, tmp_path, capsys):
    data = json.loads(result_path.read_text())
    data["extras"] = {}  # as a plugin record's result, which the server computed
    bare = tmp_path / "record.json"
    bare.write_text(json.dumps(data))
    assert main(["show", str(bare)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("cp          3 ")
    assert not any("calculations (" in line for line in out)


def test_plot_draws_each_bsse_treatment_per_level(result_path):
    result = load_result(result_path)
    props = result.properties
    ax_ie, ax_tot = figure(result).axes
    for ax, kind, scale in ((ax_ie, "interaction", KCAL), (ax_tot, "total", 1.0)):
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert sorted(lines) == ["cp", "nocp"]
        for bsse, line in lines.items():
            assert list(line.get_xdata()) == [1, 2, 3]
            expected = [getattr(props, f"{bsse}_corrected_{kind}_energy_through_{n}_body") * scale for n in (1, 2, 3)]
            assert list(line.get_ydata()) == pytest.approx(expected, abs=1e-9)
    assert "kcal/mol" in ax_ie.get_ylabel()
    labels = [t.get_text() for t in ax_ie.texts]  # the converged value next to each line
    assert f"{props.cp_corrected_interaction_energy_through_3_body * KCAL:.2f}".replace("-", "\N{MINUS SIGN}") in labels


def test_plot_of_a_result_without_total_energies_says_so(result_path, tmp_path):
    data = json.loads(result_path.read_text())
    data["input_data"]["specification"]["keywords"]["bsse_type"] = ["cp"]
    for key in data["properties"]:
        if key.startswith("cp_corrected_total_energy"):
            data["properties"][key] = None  # as when the monomers were never computed in their own basis
    cp_only = tmp_path / "cp.json"
    cp_only.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about an empty legend
        ax_ie, ax_tot = figure(load_result(cp_only)).axes
    assert [line.get_label() for line in ax_ie.get_lines() if line.get_label() == "cp"] == ["cp"]
    assert [t.get_text() for t in ax_tot.texts] == ["this result has no total energies"]
    assert ax_ie.get_xlim()[1] > 3  # the interaction levels still decide the axis


def test_plot_writes_a_png_next_to_the_result(result_path):
    proc = subprocess.run([*CLI, "plot", str(result_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = result_path.with_suffix(".png")
    assert proc.stdout.strip() == f"plot written to {png}"
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (1500, 630)
    assert not list(png.parent.glob(".*.tmp.png"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "{missing}"], "does not exist; give the result JSON"),
        (["show", "{directory}"], "cannot read"),
        (["show", "{input}"], "is not a many-body result (QCSchema ManyBodyResult"),
        (["plot", "{input}"], "is not a many-body result"),
        (["plot", "{result}", "-o", "{result}"], "is the input file"),
        (["plot", "{result}", "-o", "{missing_dir}"], "does not exist"),
    ],
)
def test_bad_arguments_get_one_clear_line(result_path, tmp_path, capsys, args, message):
    names = {
        "missing": tmp_path / "nope.json",
        "input": EXAMPLES / "water3-nwchem-hf-cp.json",
        "result": result_path,
        "missing_dir": tmp_path / "no" / "x.png",
        "directory": tmp_path,
    }
    before = result_path.read_bytes()
    assert main([a.format(**names) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert result_path.read_bytes() == before


def test_plot_without_matplotlib_names_the_extra(result_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if matplotlib were absent
    assert main(["plot", str(result_path), "-o", str(result_path.with_name("x.png"))]) == 2
    assert "pip install 'qcmb-fractal[plot]'" in capsys.readouterr().err
    assert not result_path.with_name("x.png").exists()


def test_plot_on_a_full_disk_leaves_no_partial_file(result_path, tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    def full_disk(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    out = tmp_path / "w3.png"
    assert main(["plot", str(result_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {out}: No space left on device; choose another --output.\n"
    assert list(tmp_path.iterdir()) == []
