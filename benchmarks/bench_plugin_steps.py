"""How fast one service step creates a record's children, and what the cancel checks between chunks cost.

A qcmb_manybody record's first step (eager mode) creates all its singlepoint children in one transaction,
so the per-record limit (``qcmb_fractal.max_children_per_record``) bounds how long every other service
waits. The step reads the record's status before each chunk of ``CHILD_CHUNK`` children so that a cancel
stops it; the anchor is the same step as one single chunk (no check in between), measured in the same run
on the same server. One snowflake (machine PostgreSQL, no compute manager: the children only wait), service
loop at 1 s; each case is a fresh water cluster, MBE(2), so no step reuses another's children.

    PYTHONPATH=. python benchmarks/bench_plugin_steps.py [--waters 30 60] [--repeat 2]
"""

import argparse
import logging
import os
import time

import tabulate

from qcmb_fractal.plugin.client import add_qcmb_manybodys, simple_specification
from qcmb_fractal.plugin.server import record_socket
from qcmb_fractal.testing.fractal import fractal_snowflake, portal_molecule
from qcmb_fractal.testing.molecules import water_cluster

TAG = "bench-nobody-computes-this"


def first_step_seconds(client, waters: int, shift: float) -> tuple[int, float]:
    """Children and seconds from the service's start to all children created (polled every 0.1 s)."""
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="eager")
    _, (rid,) = add_qcmb_manybodys(client, portal_molecule(water_cluster(waters, shift=shift)), spec, compute_tag=TAG)
    expected = waters + waters * (waters - 1) // 2
    while client.get_records(rid).status.value == "waiting":  # the service starts at the next tick
        time.sleep(0.02)
    start = time.monotonic()
    while sum(client.get_records(rid).children_status.values()) < expected:
        time.sleep(0.1)
    seconds = time.monotonic() - start
    client.delete_records([rid], soft_delete=False, delete_children=True)
    return expected, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waters", type=int, nargs="+", default=[30, 60], help="cluster sizes (MBE(2) of each)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case; the best is reported")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = []
    limit = {"qcmb_fractal": {"max_children_per_record": 200_000}}
    with fractal_snowflake("qcmb_bench_steps", plugin=True, compute_workers=0, extra_config=limit) as (_, client):
        shift = 0.0
        for waters in args.waters:
            best: dict[str, float] = {}
            for case, chunk in (("one chunk (anchor)", 10**9), (f"chunks of {record_socket.CHILD_CHUNK}", None)):
                for _ in range(args.repeat):
                    shift += 1.0
                    saved = record_socket.CHILD_CHUNK
                    record_socket.CHILD_CHUNK = chunk or saved
                    try:
                        children, seconds = first_step_seconds(client, waters, shift)
                    finally:
                        record_socket.CHILD_CHUNK = saved
                    best[case] = min(best.get(case, seconds), seconds)
            anchor = best["one chunk (anchor)"]
            for case, seconds in best.items():
                rows.append(
                    (waters, children, case, f"{seconds:.2f}", f"{children / seconds:.0f}", f"{seconds / anchor:.2f}")
                )
    print(tabulate.tabulate(rows, headers=["waters", "children", "step", "s", "children/s", "ratio to anchor"]))
    print(f"\nmachine load (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
