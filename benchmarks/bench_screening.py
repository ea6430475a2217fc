"""Energy-screened many-body expansions against the full expansion, on random water clusters.

For each case the full expansion (the anchor) and the screened one run through ``qcmb-fractal run``
as whole processes with the same workers, each with a fresh checkpoint; printed: calculations done
(screening + target) against the full expansion, wall time against the full expansion, the real error
of the screened total energy against the full one and the screening estimate of it (kcal/mol per
monomer). ``--sweep`` then replays other thresholds from the checkpoints, without timing them: the
full expansion's targets plus one run with nothing screened give every screening and target result.

    python3 benchmarks/bench_screening.py                # (H2O)20 MBE(4), (H2O)32 MBE(3): GFN2-xTB/GFN1-xTB;
                                                         # (H2O)10 MBE(3): NWChem HF/sto-3g with GFN1-xTB
    python3 benchmarks/bench_screening.py --quick        # small clusters, a smoke run of the script
    python3 benchmarks/bench_screening.py --sweep 0.001 0.003 0.01 0.03 0.1

Targets (issue 12): real error ≤ 0.1 kcal/mol per monomer with ≤ 25 % of the target calculations at
MBE(4); the estimate within a factor 2 of the real error or above it.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from qcelemental import constants
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult

from qcmb_fractal.execute import Backend, Checkpoint, Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import ScreeningSettings, make_plan, with_screening
from qcmb_fractal.plan.screening import DEFAULT_THRESHOLD
from qcmb_fractal.testing.molecules import random_water_cluster
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, mbe_input

KCAL = constants.hartree2kcalmol
SCREEN = "xtb/gfn1-xtb"


@dataclass
class Case:
    name: str
    waters: int
    max_nbody: int
    target: tuple[str, str, str | None]
    seed: int

    def input(self) -> ManyBodyInput:
        mol = random_water_cluster(self.waters, self.seed)
        return mbe_input(mol, {"target": self.target}, {self.max_nbody: "target"}, bsse=["nocp"])


# Seeds the tests never use: these clusters exist for this benchmark only.
CASES = [
    Case("(H2O)20 MBE(4) GFN2-xTB", 20, 4, XTB_GFN2, 2020),
    Case("(H2O)32 MBE(3) GFN2-xTB", 32, 3, XTB_GFN2, 3232),
    Case("(H2O)10 MBE(3) HF/sto-3g", 10, 3, NWCHEM_HF, 1010),
]
QUICK = [
    Case("(H2O)8 MBE(4) GFN2-xTB", 8, 4, XTB_GFN2, 808),
    Case("(H2O)10 MBE(3) GFN2-xTB", 10, 3, XTB_GFN2, 1010),
    Case("(H2O)4 MBE(3) HF/sto-3g", 4, 3, NWCHEM_HF, 404),
]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_cli(workdir: Path, name: str, inp: ManyBodyInput, workers: int) -> tuple[ManyBodyResult, float]:
    """One whole ``qcmb-fractal run`` process; returns its result and wall time."""
    path = workdir / f"{name}.json"
    path.write_text(inp.model_dump_json())
    cmd = [sys.executable, "-m", "qcmb_fractal.cli", "run", str(path), "--workers", str(workers), "--no-progress"]
    cmd += ["-o", str(workdir / f"{name}.result.json")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr}")
    return ManyBodyResult.model_validate_json((workdir / f"{name}.result.json").read_text()), wall


class CheckpointOnly(Backend):
    """For replays: every result must come from the checkpoint."""

    name = "checkpoint-only"

    def submit(self, task) -> Future:
        raise RuntimeError(f"{task.label} is not in the checkpoint")


def replay(inp: ManyBodyInput, checkpoint: Path) -> ManyBodyResult:
    return Runner(make_plan(inp), CheckpointOnly(), checkpoint=Checkpoint(checkpoint), progress=False).run()


def total(result: ManyBodyResult) -> float:
    return result.properties.nocp_corrected_total_energy


def row(label: str, n: int, full: ManyBodyResult, screened: ManyBodyResult, times: tuple[float, float] | None) -> str:
    rep = screened.extras["qcmb_fractal"]["screening"]
    real = (total(full) - total(screened)) * KCAL / n
    est = rep["estimated_error"] * KCAL / n
    signed = rep["estimated_error_signed"] * KCAL / n
    done = rep["screen_calculations"] + rep["target_calculations"]
    top = rep["levels"][-1]
    top_share = top["kept"] / top["full"] if top["full"] else 0.0
    ratio = f"{est / abs(real):7.2f}" if abs(real) > 1e-6 else f"{'-':>7}"
    timing = f"{times[0]:8.1f} {times[1]:8.1f} {times[1] / times[0]:6.2f}" if times else f"{'':8} {'':8} {'':6}"
    return (
        f"{label:32} {rep['full_calculations']:6d} {rep['screen_calculations']:6d} {rep['target_calculations']:6d} "
        f"{rep['target_calculations'] / rep['full_calculations']:7.1%} {top_share:7.1%} "
        f"{done / rep['full_calculations']:6.2f} {timing} "
        f"{real:10.4f} {est:10.4f} {signed:10.4f} {ratio}"
    )


HEADER = (
    f"{'case (threshold kcal/mol)':32} {'full':>6} {'screen':>6} {'target':>6} {'target%':>7} {'top%':>7} "
    f"{'done/f':>6} {'full s':>8} {'scr. s':>8} {'s/f':>6} "
    f"{'real err':>10} {'estimate':>10} {'signed':>10} {'est/|r|':>7}"
)
NOTES = """
full: target calculations of the unscreened expansion; screen/target: calculations the screened run did;
target%: target/full; top%: kept share of the highest level; done/f: (screen + target)/full;
full s, scr. s: wall time of the whole process; s/f: their ratio;
real err: (full - screened) total energy, kcal/mol per monomer; estimate: the magnitudes of the screening
model's increments of the dropped candidates, summed (estimated_error), same units; signed: their plain sum;
est/|r|: estimate / |real error| (target: at least 0.5)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small clusters: a smoke run of the script")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="kcal/mol, the timed runs")
    parser.add_argument("--sweep", type=float, nargs="*", default=[], help="more thresholds, replayed untimed")
    parser.add_argument("--keep", help="keep the work directory here instead of a temporary one")
    args = parser.parse_args()

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="bench-screening-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load before: {uptime()}")
    print(f"screening with {SCREEN}, {args.workers} workers, whole-process runs of qcmb-fractal run\n")
    print(HEADER)
    for i, case in enumerate(QUICK if args.quick else CASES):
        inp = case.input()
        screened_inp = with_screening(inp, ScreeningSettings.from_model_string(SCREEN, threshold=args.threshold))
        full, t_full = run_cli(workdir, f"full{i}", inp, args.workers)
        screened, t_screened = run_cli(workdir, f"screened{i}", screened_inp, args.workers)
        print(row(f"{case.name} ({args.threshold:g})", case.waters, full, screened, (t_full, t_screened)), flush=True)
        if args.sweep:
            sweep = workdir / f"sweep{i}.sqlite"
            shutil.copy(workdir / f"full{i}.result.sqlite", sweep)
            everything = with_screening(inp, ScreeningSettings.from_model_string(SCREEN, threshold=0.0))
            Runner(
                make_plan(everything), LocalBackend(args.workers), checkpoint=Checkpoint(sweep), progress=False
            ).run()
            for tau in args.sweep:
                again = replay(with_screening(inp, ScreeningSettings.from_model_string(SCREEN, threshold=tau)), sweep)
                print(row(f"  replayed ({tau:g})", case.waters, full, again, None), flush=True)
    print(NOTES)
    print(f"\nload after: {uptime()}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
