"""A campaign of several inputs on one pool vs the same inputs run one by one, through the CLI as a user runs it.

    python benchmarks/bench_campaign.py [--sizes 3 4 5 6 7 8] [--copies 2] [--max-nbody 3] [--workers 2]

The inputs are xtb water clusters (random geometries, one per size and copy), MBE(--max-nbody), nocp. The
anchor is the sequential loop a user would write (one ``qcmb-fractal run`` per input, each starting its own
pool); the campaign is one ``qcmb-fractal run`` over the directory. Both write checkpoints into fresh
directories, so nothing is reused. The table has wall time seen from outside, the calculations run, and
the campaign/anchor ratio; energies of the two are compared, since a fast wrong answer is no answer.
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qcmb_fractal.testing.molecules import random_water_cluster
from qcmb_fractal.testing.reference import XTB_GFN2, mbe_input

CLI = [sys.executable, "-m", "qcmb_fractal.cli", "run", "--no-progress"]


def write_inputs(folder: Path, sizes: list[int], copies: int, max_nbody: int) -> list[Path]:
    paths = []
    for n in sizes:
        for copy in range(copies):
            inp = mbe_input(random_water_cluster(n, seed=copy), {"gfn2": XTB_GFN2}, {max_nbody: "gfn2"}, bsse=["nocp"])
            path = folder / f"w{n}-{copy}.json"
            path.write_text(inp.model_dump_json())
            paths.append(path)
    return paths


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def energies(folder: Path) -> dict[str, float]:
    return {
        p.name: json.loads(p.read_text())["properties"]["nocp_corrected_interaction_energy"]
        for p in folder.glob("*.result.json")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--max-nbody", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    pool = ["--workers", str(args.workers)]
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        root = Path(tmp)
        inputs, single, campaign = root / "inputs", root / "single", root / "campaign"
        for d in (inputs, single, campaign):
            d.mkdir()
        paths = write_inputs(inputs, args.sizes, args.copies, args.max_nbody)
        anchor = sum(run([*CLI, str(p), *pool], single) for p in paths)
        together = run([*CLI, str(inputs), *pool, "--summary", "summary.csv"], campaign)
        a, b = energies(single), energies(campaign)
        rows = list(csv.DictReader((campaign / "summary.csv").open()))
        stats = [json.loads(p.read_text())["extras"]["qcmb_fractal"] for p in campaign.glob("*.result.json")]
    calcs = sum(s["tasks"] for s in stats)
    worst = max(abs(a[k] - b[k]) for k in a)
    sizes = ", ".join(map(str, args.sizes))
    print(f"{len(paths)} inputs ({sizes} waters × {args.copies}), MBE({args.max_nbody}) xtb, {calcs} fragment")
    print(f"calculations, {args.workers} workers, {len(rows)} summary rows\n")
    print(f"{'run':34} {'wall [s]':>9} {'ratio':>7}")
    print(f"{'one qcmb-fractal run per input':34} {anchor:9.1f} {1.0:7.2f}")
    print(f"{'one campaign (qcmb-fractal run DIR)':34} {together:9.1f} {together / anchor:7.2f}")
    print(f"\nlargest |Δ interaction energy| campaign vs single runs: {worst:.1e} Eh")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
