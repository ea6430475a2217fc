"""Reading a finished run: ``qcmb-fractal show RESULT.json`` (the energy table) and ``plot RESULT.json`` (a PNG).

People judge an MBE by how the interaction energy converges with the n-body level and how the BSSE
treatments differ; the plot puts exactly that on one page. matplotlib is optional (``[plot]`` extra).
"""

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from qcelemental import constants
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.errors import InputError
from qcmb_fractal.outputs import check_output_paths
from qcmb_fractal.plan.screening import ScreeningReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BSSE_STYLE = {  # colour-blind-safe (Okabe-Ito) colours and distinct markers, so the lines survive greyscale too
    "nocp": ("#0072B2", "o"),
    "cp": ("#D55E00", "s"),
    "vmfc": ("#009E73", "^"),
}


def load_result(path: str | Path) -> ManyBodyResult:
    """A ManyBodyResult from disk, or one line saying why the file is not one."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give the result JSON that `qcmb-fractal run` wrote.") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}.") from None
    try:
        return ManyBodyResult.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise InputError(
            f"{path} is not a many-body result (QCSchema ManyBodyResult, as `qcmb-fractal run` writes): "
            f"{first['msg']} at {where}."
        ) from None


def levels(result: ManyBodyResult, bsse: str, kind: str) -> list[tuple[int, float]]:
    """(n, energy) for every n-body level the result holds; ``kind`` is ``total`` or ``interaction``."""
    props = result.properties
    out = []
    for n in range(1, (props.calcinfo_nfr or 0) + 1):
        value = getattr(props, f"{bsse}_corrected_{kind}_energy_through_{n}_body", None)
        if value is not None:
            out.append((n, value))
    return out


def bsse_types(result: ManyBodyResult) -> list[str]:
    return [b.value for b in result.input_data.specification.keywords.bsse_type]


def energy_table(result: ManyBodyResult) -> str:
    """Total and interaction energies per BSSE treatment and n-body level, in hartree and kcal/mol."""
    kcal = constants.hartree2kcalmol
    rows = [f"{'bsse':6} {'n-body':>6} {'total [Eh]':>20} {'interaction [Eh]':>20} {'interaction [kcal/mol]':>24}"]
    for bsse in bsse_types(result):
        total = dict(levels(result, bsse, "total"))
        inter = dict(levels(result, bsse, "interaction"))
        for n in sorted(total.keys() | inter.keys()):
            tot, ie = total.get(n), inter.get(n)
            tot_s = f"{tot:20.10f}" if tot is not None else f"{'-':>20}"
            ie_s = f"{ie:20.10f} {ie * kcal:24.6f}" if ie is not None else f"{'-':>20} {'-':>24}"
            rows.append(f"{bsse:6} {n:6d} {tot_s} {ie_s}")
    return "\n".join(rows)


def model_chemistry(result: ManyBodyResult) -> str:
    """``program method/basis`` of each model chemistry, e.g. ``nwchem hf/sto-3g``."""
    labels = []
    for spec in result.input_data.specification.specification.values():
        model = spec.model
        method = f"{model.method}/{model.basis}" if model.basis else model.method
        labels.append(f"{spec.program} {method}")
    return ", ".join(dict.fromkeys(labels))


def title(result: ManyBodyResult) -> str:
    mol = result.input_data.molecule
    name = mol.name or mol.get_molecular_formula()
    return f"{name}: {len(mol.fragments)} fragments, {model_chemistry(result)}"


def summary(result: ManyBodyResult) -> str:
    """What ``show`` prints: what was computed, the energy table, and how the run went if qcmb-fractal ran it."""
    lines = [title(result), "", energy_table(result)]
    stats = result.extras.get("qcmb_fractal") or {}
    if {"tasks", "computed", "reused", "wall_time", "backend"} <= stats.keys():  # a run's own statistics
        util = f", utilization {stats['utilization']:.0%}" if stats.get("utilization") is not None else ""
        lines += [
            "",
            f"{stats['tasks']} calculations ({stats['computed']} computed, {stats['reused']} from checkpoint) "
            f"in {stats['wall_time']:.1f} s on the {stats['backend']} backend{util}",
        ]
    if "screening" in stats:  # a screened expansion says so, with what it left out
        lines += ["", ScreeningReport.model_validate(stats["screening"]).table()]
    return "\n".join(lines)


def figure(result: ManyBodyResult) -> "Figure":
    """Interaction energy (kcal/mol) and total energy (Eh) against n-body level, one line per BSSE treatment."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FormatStrFormatter, MaxNLocator
    except ImportError:
        raise InputError("qcmb-fractal plot needs matplotlib: pip install 'qcmb-fractal[plot]'.") from None
    kcal = constants.hartree2kcalmol
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_ie, ax_tot = fig.subplots(1, 2)
    for bsse in bsse_types(result):
        colour, marker = BSSE_STYLE.get(bsse, ("black", "D"))
        inter = levels(result, bsse, "interaction")
        if inter:
            ns, es = zip(*inter, strict=True)
            ax_ie.plot(ns, [e * kcal for e in es], marker=marker, color=colour, label=bsse)
            ax_ie.annotate(
                f"{es[-1] * kcal:.2f}".replace("-", "\N{MINUS SIGN}"),
                (ns[-1], es[-1] * kcal),
                textcoords="offset points",
                xytext=(6, 0),
                va="center",
                color=colour,
                fontsize=9,
            )
        total = levels(result, bsse, "total")
        if total:
            ns, es = zip(*total, strict=True)
            ax_tot.plot(ns, es, marker=marker, color=colour, label=bsse)
    ax_ie.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--")
    ax_ie.set_ylabel("interaction energy through n-body [kcal/mol]")
    ax_tot.set_ylabel("total energy through n-body [$E_h$]")
    ax_tot.yaxis.set_major_formatter(FormatStrFormatter("%.4f"))  # absolute hartrees, never an offset
    top = max(
        (n for bsse in bsse_types(result) for kind in ("total", "interaction") for n, _ in levels(result, bsse, kind)),
        default=1,
    )
    ax_ie.set_title("interaction energy", fontsize=11)
    ax_tot.set_title("total energy", fontsize=11)
    for ax, kind in ((ax_ie, "interaction"), (ax_tot, "total")):
        ax.set_xlabel("n-body level")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.7, top + 0.6)  # room right of the last level for its value
        ax.grid(True, color="0.9")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="BSSE")
        else:  # e.g. cp alone without the monomers in their own basis has no total energies
            ax.text(0.5, 0.5, f"this result has no {kind} energies", transform=ax.transAxes, ha="center", color="0.4")
            ax.set_yticks([])
    fig.suptitle(title(result))
    return fig


def plot(result: ManyBodyResult, output: Path) -> None:
    """Write :func:`figure` as a PNG, whole or not at all."""
    fig = figure(result)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {output}: {err.strerror}; choose another --output.") from None


def cmd_show(args: argparse.Namespace) -> int:
    print(summary(load_result(args.result)))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    result_path = Path(args.result)
    result = load_result(result_path)
    output = Path(args.output) if args.output else result_path.with_suffix(".png")
    check_output_paths(result_path, output, None)
    plot(result, output)
    print(f"plot written to {output}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    show = sub.add_parser("show", help="print the energy table of a finished run's RESULT.json")
    show.add_argument("result", help="the result JSON that `qcmb-fractal run` wrote")
    show.set_defaults(handler=cmd_show)
    plot_cmd = sub.add_parser(
        "plot", help="PNG of total and interaction energy against n-body level per BSSE type (needs [plot])"
    )
    plot_cmd.add_argument("result", help="the result JSON that `qcmb-fractal run` wrote")
    plot_cmd.add_argument("-o", "--output", help="PNG to write (default: RESULT with .png instead of .json)")
    plot_cmd.set_defaults(handler=cmd_plot)
