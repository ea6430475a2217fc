"""Whole-process time of ``qcmb-fractal run`` (local backend, 2 workers) against QCManyBody's serial computer.

Both sides are timed as a user sees them: a fresh ``python3`` process from start to exit, imports, input
reading, planning, worker start-up and QCEngine's first-call set-up included. The anchor is a plain
QCManyBody script (``ManyBodyComputer.from_manybodyinput``) with one core per job: ``task_config``
``ncores=1`` and ``OMP_NUM_THREADS=1``, faster than QCEngine's default (every core per job) for small
fragments and the fair match for two single-core workers. Each figure is the median of ``--repeat`` runs,
serial and local alternating so the machine's load hits both alike.

Also printed, for the local run: the driver process's CPU seconds (whole process, and inside the runner
loop per finished task: what bookkeeping costs on the cores the workers need) and the checkpoint's bytes
per stored result. Targets (issue 9): the 41-task xtb job at <= 1.0x of serial (aim 0.6x); xtb (H2O)20
MBE(3) >= 1.8x faster than serial; checkpoint <= 2 KB per xtb result, <= 5 KB per NWChem result.

Run: ``python benchmarks/bench_local.py`` (xtb (H2O)6 MBE(3), 41 tasks); add ``--large`` for xtb (H2O)20
MBE(3) (1350 tasks), ``--nwchem`` for NWChem HF/sto-3g (H2O)3 MBE(3) nocp+cp and ``--planning`` for the
time and peak memory of planning a 64-water MBE(3) (targets of issue 2: <= 5 s, < 1 GiB).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES: dict[str, dict[str, Any]] = {
    "xtb-w6": {
        "title": "GFN2-xTB (H2O)6 MBE(3) nocp",
        "waters": 6,
        "model": ("xtb", "gfn2-xtb", None),
        "bsse": ["nocp"],
        "target": "local <= 1.0x serial",
        "ok": lambda ratio: ratio <= 1.0,
        "ckpt_kb": 2.0,
    },
    "xtb-w20": {
        "title": "GFN2-xTB (H2O)20 MBE(3) nocp",
        "waters": 20,
        "model": ("xtb", "gfn2-xtb", None),
        "bsse": ["nocp"],
        "target": "serial/local >= 1.8x",
        "ok": lambda ratio: ratio <= 1 / 1.8,
        "ckpt_kb": 2.0,
    },
    "nwchem-w3": {
        "title": "NWChem HF/sto-3g (H2O)3 MBE(3) nocp+cp",
        "waters": 3,
        "model": ("nwchem", "hf", "sto-3g"),
        "bsse": ["nocp", "cp"],
        "target": "local <= 1.0x serial",
        "ok": lambda ratio: ratio <= 1.0,
        "ckpt_kb": 5.0,
    },
}

SERIAL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMPI_MCA_pml": "ob1"}


def write_input(case: dict[str, Any], path: Path) -> None:
    from qcmb_fractal.testing.molecules import water_cluster
    from qcmb_fractal.testing.reference import mbe_input

    inp = mbe_input(water_cluster(case["waters"]), {"mc": case["model"]}, {3: "mc"}, bsse=case["bsse"])
    path.write_text(inp.model_dump_json())


def serial_script(input_path: str, output_path: str) -> None:
    """What a QCManyBody user runs: its serial computer, one core per job. Runs as its own process."""
    import qcengine
    from qcmanybody.models.v2 import ManyBodyInput
    from qcmanybody.v2 import ManyBodyComputer

    original = qcengine.compute

    def one_core(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "task_config": {**(kwargs.get("task_config") or {}), "ncores": 1}})

    qcengine.compute = one_core
    result = ManyBodyComputer.from_manybodyinput(ManyBodyInput.model_validate_json(Path(input_path).read_text()))
    Path(output_path).write_text(json.dumps({"energy": float(result.properties.return_energy)}))


def driver_script(stats_path: str, argv: list[str]) -> int:
    """``qcmb-fractal run`` in this process; afterwards, this process's own CPU (not its workers')."""
    from qcmb_fractal.cli import main

    code = main(argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(stats_path).write_text(json.dumps({"driver_cpu": usage.ru_utime + usage.ru_stime}))
    return code


def planning_script(waters: int) -> None:
    """Validate the input and enumerate/hash every task of an MBE(3), no molecule built; prints JSON."""
    from qcmb_fractal.plan import Plan
    from qcmb_fractal.testing.molecules import water_cluster
    from qcmb_fractal.testing.reference import mbe_input

    mol = water_cluster(waters)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    plan = Plan(mbe_input(mol, {"mc": ("xtb", "gfn2-xtb", None)}, {3: "mc"}, bsse=["nocp"]))
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "tasks": len(plan.tasks), "peak_mib": peak, "baseline_mib": baseline}))


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=3600)
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return wall


def run_serial(input_path: Path, work: Path) -> dict[str, Any]:
    output = work / "serial.json"
    wall = timed([sys.executable, __file__, "--serial", str(input_path), str(output)], {**os.environ, **SERIAL_ENV})
    return {"wall": wall, **json.loads(output.read_text())}


def run_local(input_path: Path, work: Path) -> dict[str, Any]:
    output, checkpoint, stats = work / "local.result.json", work / "local.sqlite", work / "driver.json"
    for stale in work.glob("local.*"):
        stale.unlink()
    argv = [
        "run",
        str(input_path),
        "--workers",
        "2",
        "--no-progress",
        "-o",
        str(output),
        "--checkpoint",
        str(checkpoint),
    ]
    wall = timed([sys.executable, __file__, "--driver", str(stats), *argv], dict(os.environ))
    result = json.loads(output.read_text())
    ours = result["extras"]["qcmb_fractal"]
    ckpt_bytes = sum(p.stat().st_size for p in work.glob("local.sqlite*"))
    return {
        "wall": wall,
        "energy": result["properties"]["return_energy"],
        "tasks": ours["tasks"],
        "driver_cpu": json.loads(stats.read_text())["driver_cpu"],
        "loop_cpu": ours.get("driver_cpu"),
        "ckpt_per_result": ckpt_bytes / max(1, ours["computed"]),
    }


def measure(name: str, repeat: int, work: Path) -> dict[str, Any]:
    input_path = work / f"{name}.json"
    write_input(CASES[name], input_path)
    serial, local = [], []
    for _ in range(repeat):
        serial.append(run_serial(input_path, work))
        local.append(run_local(input_path, work))
    med = statistics.median
    return {
        "tasks": local[0]["tasks"],
        "serial": med(r["wall"] for r in serial),
        "local": med(r["wall"] for r in local),
        "driver_cpu": med(r["driver_cpu"] for r in local),
        "loop_cpu_per_task": med(r["loop_cpu"] / r["tasks"] for r in local) if local[0]["loop_cpu"] else None,
        "ckpt_per_result": med(r["ckpt_per_result"] for r in local),
        "dE": max(abs(r["energy"] - serial[0]["energy"]) for r in [*serial, *local]),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serial", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--driver", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    parser.add_argument("--large", action="store_true", help="also xtb (H2O)20 MBE(3), 1350 tasks")
    parser.add_argument("--nwchem", action="store_true", help="also NWChem HF/sto-3g (H2O)3 MBE(3) nocp+cp")
    parser.add_argument("--planning", nargs="?", const=64, type=int, metavar="WATERS", help="also planning (H2O)64")
    parser.add_argument("--plan-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_only:
        planning_script(args.plan_only)
        return
    if args.serial:
        serial_script(*args.serial)
        return
    if args.driver:
        sys.exit(driver_script(args.driver[0], args.driver[1:]))
    names = ["xtb-w6"] + ["xtb-w20"] * args.large + ["nwchem-w3"] * args.nwchem
    print(f"{os.cpu_count()} cores; {uptime()}")
    print(f"whole-process wall seconds, median of {args.repeat}; serial = QCManyBody, 1 core/job; local = 2 workers\n")
    header = (
        f"{'case':40} {'tasks':>5} {'serial':>7} {'local':>7} {'local/serial':>12} {'driver CPU':>10} "
        f"{'loop CPU/task':>13} {'ckpt/result':>11} {'max |dE|':>8}  target"
    )
    print(header)
    print("-" * (len(header) + 30))
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        for name in names:
            case = CASES[name]
            res = measure(name, args.repeat, Path(tmp))
            ratio = res["local"] / res["serial"]
            loop = f"{1000 * res['loop_cpu_per_task']:.1f} ms" if res["loop_cpu_per_task"] is not None else "-"
            kb = res["ckpt_per_result"] / 1024
            ok = "ok" if case["ok"](ratio) else "MISS"
            ckpt_ok = "ok" if kb <= case["ckpt_kb"] else "MISS"
            print(
                f"{case['title']:40} {res['tasks']:5d} {res['serial']:7.2f} {res['local']:7.2f} {ratio:11.2f}x "
                f"{res['driver_cpu']:9.2f}s {loop:>13} {kb:8.2f} KB {res['dE']:8.1e}  "
                f"{case['target']}: {ok}; ckpt <= {case['ckpt_kb']:.0f} KB: {ckpt_ok}"
            )
    if args.planning:
        out = subprocess.run(
            [sys.executable, __file__, "--plan-only", str(args.planning)], capture_output=True, text=True, check=True
        )
        plan = json.loads(out.stdout)
        ok = "ok" if plan["wall"] <= 5 and plan["peak_mib"] < 1024 else "MISS"
        print(
            f"\nplanning (H2O){args.planning} MBE(3): {plan['tasks']} tasks in {plan['wall']:.2f} s, peak RSS "
            f"{plan['peak_mib']:.0f} MiB ({plan['baseline_mib']:.0f} MiB before planning); <= 5 s, < 1 GiB: {ok}"
        )
    print(f"\n{uptime()}")


if __name__ == "__main__":
    main()
