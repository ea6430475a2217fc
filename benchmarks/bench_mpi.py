"""MPI backend vs local backend on the same input, in one run, through the CLI as a user runs it.

    python benchmarks/bench_mpi.py [--case xtb-w20 nwchem-w6] [--workers 2] [--repeat 2]

Both backends get the same number of compute processes (local: --workers W; mpi: mpiexec -n W+1, rank 0
drives), no checkpoint, and the same input; runs alternate local/mpi so load from other users of the
machine hits both alike, and the best of --repeat is shown. The table has wall time seen from outside
(start-up included), the runner's own wall time, worker utilization, MPI messages, and MPI/local ratios.
Energies are compared too, since a fast wrong answer is no answer.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from qcmb_fractal.testing.molecules import water_cluster_text

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "qcmb_fractal.cli", "-v", "run"]


def case_input(name: str, workdir: Path) -> list[str]:
    """The input file and options of a named case."""
    if name == "xtb-w20":
        path = workdir / "w20.xyz"
        path.write_text(water_cluster_text(20))
        return [str(path), "--program", "xtb", "--method", "gfn2-xtb", "--max-nbody", "3"]
    if name == "nwchem-w6":
        return [str(ROOT / "examples" / "water6-nwchem-hf-cp.json"), "--max-nbody", "2"]
    raise SystemExit(f"unknown case {name}")


def mpiexec() -> list[str]:
    exe = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
    if exe is None:
        raise SystemExit("no mpiexec: pip install 'qcmb-fractal[mpi]'")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        return [exe, "--oversubscribe", "--allow-run-as-root"]
    return [exe]


def run(cmd: list[str], output: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(output.read_text())
    messages = re.search(r"(\d+) results in (\d+) messages", proc.stderr)
    return {
        "outside": wall,
        "stats": result["extras"]["qcmb_fractal"],
        "energy": result["return_result"],
        "messages": f"{messages.group(2)} for {messages.group(1)}" if messages else "-",
    }


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["outside"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=["xtb-w20"], choices=["xtb-w20", "nwchem-w6"])
    parser.add_argument("--workers", type=int, default=2, help="compute processes for each backend")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each backend; the best is shown")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for case in args.case:
            inp = case_input(case, workdir)
            common = ["--no-checkpoint", "--no-progress", "--cores-per-task", "1"]
            out_local, out_mpi = workdir / f"{case}-local.json", workdir / f"{case}-mpi.json"
            local_cmd = [*CLI, *inp, *common, "--backend", "local", "--workers", str(args.workers)]
            mpi_cmd = [*mpiexec(), "-n", str(args.workers + 1), *CLI, *inp, *common, "--backend", "mpi"]
            local_runs, mpi_runs = [], []
            for _ in range(args.repeat):
                local_runs.append(run([*local_cmd, "-o", str(out_local)], out_local))
                mpi_runs.append(run([*mpi_cmd, "-o", str(out_mpi)], out_mpi))
            rows.append((case, best(local_runs), best(mpi_runs)))
    head = (
        f"{'case':10} {'backend':9} {'tasks':>6} {'outside [s]':>12} {'runner [s]':>11} {'util':>6} "
        f"{'|ΔE| [Eh]':>10}  {'result messages':>16}"
    )
    print(head)
    print("-" * len(head))
    for case, local, mpi in rows:
        diff = abs(np.ravel(local["energy"]) - np.ravel(mpi["energy"])).max()
        for name, r in (("local", local), ("mpi", mpi)):
            s = r["stats"]
            util = f"{s['utilization']:.0%}" if s.get("utilization") is not None else "-"
            print(
                f"{case:10} {name:9} {s['tasks']:6d} {r['outside']:12.2f} {s['wall_time']:11.2f} {util:>6} "
                f"{diff if name == 'mpi' else 0.0:10.1e}  {r['messages']:>16}"
            )
        print(
            f"{case:10} {'mpi/local':9} {'':6} {mpi['outside'] / local['outside']:12.2f} "
            f"{mpi['stats']['wall_time'] / local['stats']['wall_time']:11.2f}"
        )
    print(
        f"\n{args.workers} compute processes each (mpi: {args.workers + 1} ranks, rank 0 drives); ratio < 1: mpi faster"
    )


if __name__ == "__main__":
    main()
