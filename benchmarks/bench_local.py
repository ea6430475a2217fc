"""QCManyBody's serial computer vs the local backend (2 workers), and planning a 64-water MBE(3).

Every measurement runs in a fresh Python process (this script calling itself), so no run inherits
another's warm caches and peak memory is per measurement. Serial anchors:

* ``serial (default)``: ``ManyBodyComputer.from_manybodyinput`` exactly as QCManyBody runs it, where
  QCEngine gives each fragment calculation every core of the machine;
* ``serial (1 core/job)``: the same, but each job held to one core (``task_config={"ncores": 1}``),
  which is often faster for small fragments and the fairer anchor for a 2-worker pool.

Timings include everything a user waits for after the input is read: pool start-up and QCEngine's
first-call probe included. Targets (issue 2): >= 1.9x on NWChem, >= 1.8x on xtb, planning <= 5 s and
< 1 GB. Run: ``python benchmarks/bench_local.py`` (add ``--quick`` for smaller clusters).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

CASES: dict[str, dict[str, Any]] = {
    "nwchem-w6": {
        "title": "NWChem HF/sto-3g (H2O)6 MBE(3) nocp+cp",
        "waters": 6,
        "model": ("nwchem", "hf", "sto-3g"),
        "bsse": ["nocp", "cp"],
        "max_nbody": 3,
        "target": 1.9,
    },
    "xtb-w20": {
        "title": "GFN2-xTB (H2O)20 MBE(3) nocp",
        "waters": 20,
        "model": ("xtb", "gfn2-xtb", None),
        "bsse": ["nocp"],
        "max_nbody": 3,
        "target": 1.8,
    },
}
VARIANTS = ("serial-default", "serial-1core", "local-2")


def build_input(case: dict[str, Any]):
    from qcmb_fractal.testing.molecules import water_cluster
    from qcmb_fractal.testing.reference import mbe_input

    return mbe_input(
        water_cluster(case["waters"]),
        {"mc": case["model"]},
        {case["max_nbody"]: "mc"},
        bsse=case["bsse"],
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_run(name: str, variant: str) -> dict[str, Any]:
    """One timed run inside this (fresh) process."""
    from qcmb_fractal.execute import Runner
    from qcmb_fractal.execute.backends.local import LocalBackend
    from qcmb_fractal.plan import Plan
    from qcmb_fractal.testing.reference import serial_reference

    inp = build_input(CASES[name])
    ntasks = len(Plan(inp).tasks)
    start = time.perf_counter()
    if variant == "local-2":
        with LocalBackend(2) as backend:
            result = Runner(Plan(inp), backend, progress=False).run()
    elif variant == "serial-1core":
        result = serial_reference(inp, ncores=1)
    else:
        result = serial_reference(inp, ncores=None)
    wall = time.perf_counter() - start
    return {"wall": wall, "tasks": ntasks, "energy": float(result.properties.return_energy)}


def measure_planning(waters: int, max_nbody: int) -> dict[str, Any]:
    """Time and peak memory to validate the input and enumerate/hash every task (no molecule built)."""
    from qcmb_fractal.plan import Plan
    from qcmb_fractal.testing.molecules import water_cluster
    from qcmb_fractal.testing.reference import mbe_input

    mol = water_cluster(waters)
    baseline = peak_rss_mib()
    start = time.perf_counter()
    plan = Plan(mbe_input(mol, {"mc": ("xtb", "gfn2-xtb", None)}, {max_nbody: "mc"}, bsse=["nocp"]))
    wall = time.perf_counter() - start
    first = plan.atomic_input(plan.tasks[-1])  # one molecule built on demand, as a worker does
    assert len(first.molecule.symbols) == 3 * max_nbody
    return {"wall": wall, "tasks": len(plan.tasks), "peak_mib": peak_rss_mib(), "baseline_mib": baseline}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child(args: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh process; add the CPU seconds of its whole process tree."""
    env = {"OMPI_MCA_pml": "ob1", **os.environ}  # what the local backend's workers use, unless set
    cpu = children_cpu()
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False, timeout=3600
    )
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "cpu": children_cpu() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--plan", nargs=2, type=int, metavar=("WATERS", "NBODY"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller clusters (a smoke test of this script)")
    args = parser.parse_args()
    if args.quick:
        CASES["nwchem-w6"].update(waters=3, title="NWChem HF/sto-3g (H2O)3 MBE(3) nocp+cp")
        CASES["xtb-w20"].update(waters=6, title="GFN2-xTB (H2O)6 MBE(3) nocp")
    if args.one:
        print(json.dumps(measure_run(*args.one)))
        return
    if args.plan:
        print(json.dumps(measure_planning(*args.plan)))
        return
    extra = ["--quick"] if args.quick else []
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load:.1f} at start; each figure from a fresh process; wall seconds")
    print("(CPU = user+sys seconds of the whole process tree incl. QC programs: what the run costs, load or not)\n")
    header = f"{'case':42} {'tasks':>6} {'serial':>8} {'serial 1c':>9} {'local x2':>8} {'speedup':>8} {'vs 1c':>6}"
    print(header + "  target       max |dE|  CPU serial/1c/local")
    print("-" * (len(header) + 40))
    for name, case in CASES.items():
        res = {v: child(["--one", name, v, *extra]) for v in VARIANTS}
        local = res["local-2"]["wall"]
        s_def, s_one = res["serial-default"]["wall"], res["serial-1core"]["wall"]
        diff = max(abs(res[v]["energy"] - res["local-2"]["energy"]) for v in VARIANTS)
        ok = "ok" if s_def / local >= case["target"] else "MISS"
        print(
            f"{case['title']:42} {res['local-2']['tasks']:6d} {s_def:8.1f} {s_one:9.1f} {local:8.1f} "
            f"{s_def / local:7.2f}x {s_one / local:5.2f}x  >={case['target']}x {ok:4} {diff:.1e}  "
            + "/".join(f"{res[v]['cpu']:.1f}" for v in VARIANTS)
        )
    waters = 16 if args.quick else 64
    plan = child(["--plan", str(waters), "3"])
    ok = "ok" if plan["wall"] <= 5 and plan["peak_mib"] < 1024 else "MISS"
    print(
        f"\nplanning (H2O){waters} MBE(3): {plan['tasks']} tasks in {plan['wall']:.2f} s, peak RSS "
        f"{plan['peak_mib']:.0f} MiB (of which {plan['baseline_mib']:.0f} MiB before planning); "
        f"targets <= 5 s, < 1024 MiB: {ok}"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


if __name__ == "__main__":
    main()
