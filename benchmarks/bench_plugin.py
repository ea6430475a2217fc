"""Time-to-solution of the qcmb_manybody service vs QCFractal's built-in manybody service, same server.

One snowflake (machine PostgreSQL, one compute manager with N workers, manager poll and service loop at
1 s) runs every case in turn with find_existing=False, so no service reuses another's singlepoints.
Prints a table with the time from submission to completion, the ratio to the built-in service measured
in the same run, and the largest difference in n-body interaction energies between the two services
(must be < 1e-9 Eh).

    PYTHONPATH=. python benchmarks/bench_plugin.py [--workers 2] [--quick]
"""

import argparse
import logging
import time

from qcportal.molecules import Molecule
from qcportal.record_models import RecordStatusEnum
from qcportal.singlepoint import QCSpecification

from qcmb_fractal.plan.inputs import parse_plain_molecule
from qcmb_fractal.plugin.client import add_qcmb_manybodys, simple_specification
from qcmb_fractal.testing.fractal import fractal_snowflake
from qcmb_fractal.testing.molecules import WATER_TRIMER_BOHR

STACK_SHIFT = 3.0 / 0.52917721067


def waters(n: int) -> Molecule:
    mol = parse_plain_molecule(WATER_TRIMER_BOHR)
    symbols, geometry, fragments = [], [], []
    for copy in range(n // 3):
        for frag in mol["fragments"]:
            fragments.append([len(symbols) + i for i in range(len(frag))])
            for atom in frag:
                symbols.append(mol["symbols"][atom])
                x, y, z = mol["geometry"][3 * atom : 3 * atom + 3]
                geometry += [x, y, z + copy * STACK_SHIFT]
    return Molecule(symbols=symbols, geometry=geometry, fragments=fragments)


CASES = {
    "xtb water hexamer MBE(3) nocp": dict(n=6, program="xtb", method="gfn2-xtb", basis=None, bsse=["nocp"], nbody=3),
    "NWChem HF/STO-3G water trimer cp": dict(n=3, program="nwchem", method="hf", basis="sto-3g", bsse=["cp"], nbody=3),
}


def wait(client, record_id: int, poll: float = 0.2) -> float:
    while True:
        record = client.get_records(record_id)
        if record.status in (RecordStatusEnum.complete, RecordStatusEnum.error):
            if record.status == RecordStatusEnum.error:
                raise RuntimeError(f"record {record_id} errored: {record.error}")
            return time.monotonic()
        time.sleep(poll)


def run_builtin(client, mol: Molecule, case: dict) -> tuple[float, dict[int, float], int]:
    """QCFractal's own service; its energy_body_dict holds totals per n-body level for the requested bsse type."""
    qcsp = QCSpecification(program=case["program"], driver="energy", method=case["method"], basis=case["basis"])
    levels = {n: qcsp for n in range(1, case["nbody"] + 1)}
    start = time.monotonic()
    _, (rid,) = client.add_manybodys([mol], "qcmanybody", levels, case["bsse"], {}, find_existing=False)
    elapsed = wait(client, rid) - start
    record = client.get_manybodys(rid)
    body = record.properties["energy_body_dict"]
    bt = case["bsse"][0]
    return elapsed, {n: body[f"{n}{bt}"] - body[f"1{bt}"] for n in range(2, case["nbody"] + 1)}, len(record.clusters)


def run_plugin(client, mol: Molecule, case: dict, mode: str) -> tuple[float, dict[int, float], int]:
    spec = simple_specification(
        program=case["program"],
        method=case["method"],
        basis=case["basis"],
        bsse=case["bsse"],
        max_nbody=case["nbody"],
        mode=mode,
    )
    start = time.monotonic()
    _, (rid,) = add_qcmb_manybodys(client, mol, spec, find_existing=False)
    elapsed = wait(client, rid) - start
    record = client.get_records(rid)
    bt = case["bsse"][0]
    energies = {
        n: record.properties[f"{bt}_corrected_interaction_energy_through_{n}_body"] for n in range(2, case["nbody"] + 1)
    }
    return elapsed, energies, len(record.clusters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="compute-manager workers (default 2)")
    parser.add_argument("--quick", action="store_true", help="trimer instead of hexamer for the xtb case")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        CASES["xtb water hexamer MBE(3) nocp"]["n"] = 3

    rows = []
    with fractal_snowflake("qcmb_plugin_bench", plugin=True, compute_workers=args.workers) as (_, client):
        for name, case in CASES.items():
            mol = waters(case["n"])
            t_ref, e_ref, n_ref = run_builtin(client, mol, case)
            rows.append((name, "built-in manybody", n_ref, t_ref, 1.0, 0.0))
            for mode in ("eager", "levels"):
                t, e, n = run_plugin(client, mol, case, mode)
                diff = max(abs(e[k] - e_ref[k]) for k in e_ref)
                rows.append((name, f"qcmb_manybody {mode}", n, t, t / t_ref, diff))

    print(f"\nTime to solution on one compute manager with {args.workers} workers (lower is better)\n")
    print(f"{'case':36s} {'service':24s} {'children':>8s} {'time/s':>8s} {'ratio':>6s} {'max |dE| (Eh)':>14s}")
    for name, service, n, t, ratio, diff in rows:
        print(f"{name:36s} {service:24s} {n:8d} {t:8.1f} {ratio:6.2f} {diff:14.2e}")


if __name__ == "__main__":
    main()
