"""QCPortal backend against a real QCFractal server and compute manager, anchored on the local backend.

Runs the same xtb MBE in one process: local pool, a first qcportal run (every singlepoint computed by
the manager), and a second qcportal client on the same server (everything found, nothing computed).
Prints wall times, ratios to the local run, the largest energy difference, and what was submitted.

    python benchmarks/qcportal_vs_local.py [--max-nbody 2] [--workers 2]
"""

import argparse
import logging
import time
from pathlib import Path

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.backends.qcportal import QCPortalBackend
from qcmb_fractal.plan import Plan, load_input
from qcmb_fractal.testing.fractal import fractal_snowflake

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "water6.xyz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-nbody", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="local workers and compute manager workers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    plan = Plan(load_input(EXAMPLE, program="xtb", method="gfn2-xtb", max_nbody=args.max_nbody))
    rows = []
    t0 = time.perf_counter()
    with LocalBackend(args.workers) as local:
        reference = Runner(plan, local, progress=False).run()
    rows.append(("local", time.perf_counter() - t0, 0.0, "-"))
    energy = reference.properties.return_energy

    with fractal_snowflake("qcmb_qcportal_bench", plugin=False, compute_workers=args.workers) as (snowflake, _):
        for label in ("qcportal, first client", "qcportal, second client"):
            backend = QCPortalBackend(client=snowflake.client(), poll_interval=1.0)
            t0 = time.perf_counter()
            with backend:
                result = Runner(plan, backend, progress=False).run()
            wall = time.perf_counter() - t0
            diff = abs(result.properties.return_energy - energy)
            rows.append((label, wall, diff, f"{backend.inserted} submitted, {backend.existing} found"))

    print(f"water hexamer, xtb MBE({args.max_nbody}): {len(plan.tasks)} calculations, {args.workers} workers")
    print(f"{'backend':26} {'wall [s]':>9} {'vs local':>9} {'|dE| [Eh]':>10}  server")
    anchor = rows[0][1]
    for label, wall, diff, note in rows:
        print(f"{label:26} {wall:9.2f} {wall / anchor:9.2f} {diff:10.1e}  {note}")
    first = rows[1][1]
    print(f"manager time per calculation per worker: {first * args.workers / len(plan.tasks):.2f} s")


if __name__ == "__main__":
    main()
